"""An engine process started early (`ember worker` starts it before its own imports) is taken
by the server's first start, and ended if nobody takes it: a supervisor stopped first, or one
running its engine in-process. Real spawned processes, whose entry point just waits."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from ember.engine.config import EngineConfig
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.engine_spawn import spawn_engine, worker_engine_config
from ember.serve.metrics import ServerMetrics
from ember.serve.supervisor import WorkerSupervisor


def wait_forever(sock: socket.socket, config: EngineConfig) -> None:
    time.sleep(120)


def supervisor(config: ServerConfig, spawned: object) -> WorkerSupervisor:
    metrics = ServerMetrics("m", 64)
    return WorkerSupervisor(config, EngineClient(config, metrics), metrics, spawned)  # type: ignore[arg-type]


def test_a_supervisor_stopped_before_it_starts_ends_the_process_it_was_given() -> None:
    config = ServerConfig(engine=EngineConfig())
    spawned = spawn_engine(worker_engine_config(config.engine), wait_forever)
    given = spawned._process
    assert given is not None and given.is_alive()
    asyncio.run(supervisor(config, spawned).stop())
    assert given.exitcode is not None
    with pytest.raises(RuntimeError, match="already taken or discarded"):
        spawned.take()


def test_a_taken_process_is_the_takers_to_end() -> None:
    spawned = spawn_engine(EngineConfig(), wait_forever)
    process, sock = spawned.take()
    spawned.discard()  # taken: not ended here
    assert process.is_alive()
    process.kill()
    process.join()
    sock.close()


def test_an_in_process_engine_ends_the_process_started_for_it() -> None:
    config = ServerConfig(engine=EngineConfig(model="tests/fixtures/tiny_llama.gguf", device="cpu"),
                          in_process=True)  # fmt: skip
    spawned = spawn_engine(worker_engine_config(config.engine), wait_forever)
    given = spawned._process
    assert given is not None

    async def run() -> None:
        sup = supervisor(config, spawned)
        await sup.start()
        await sup.stop()

    asyncio.run(run())
    assert given.exitcode is not None


def test_the_worker_engine_settings_leave_text_to_the_server() -> None:
    engine = worker_engine_config(EngineConfig(max_num_seqs=7))
    assert not engine.detokenize and not engine.show_progress and engine.max_num_seqs == 7
