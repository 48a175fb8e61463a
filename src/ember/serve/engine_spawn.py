"""Starting the engine's worker process: its socket pair and its `spawn`ed interpreter.

`ProcessWorker` starts one this way whenever it needs one. A process that must come up fast
(`ember worker` started by a scale-from-zero, whose first job waits for it) starts it before
anything else instead, with only this light module imported: the engine's imports and model
load then run beside the process's own (the HTTP stack, NATS, the tokenizer), and the server
adopts the engine when it starts (`WorkerSupervisor`'s `prestarted`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from ember.engine.config import EngineConfig
from ember.serve.config import ServerConfig

EngineMain = Callable[[socket.socket, EngineConfig], None]


def worker_engine_config(engine: EngineConfig) -> EngineConfig:
    """The engine settings a server's worker process runs with: token ids only (the server
    detokenizes), no progress bars."""
    return dataclasses.replace(engine, detokenize=False, show_progress=False)


def engine_process_main(sock: socket.socket, config: EngineConfig) -> None:
    """The worker process's entry point, importing the engine only in the child. The driver's
    start-up (cuInit, the primary context: ~0.2 s, the GIL released) begins first, so that it
    runs beside the engine's imports rather than after them."""
    if config.device != "cpu":
        from ember.gpu import warmup

        warmup.start()
    from ember.serve.process_worker import worker_main

    worker_main(sock, config)


class SpawnedEngine:
    """A started engine process and the server's end of its socket, until a `ProcessWorker`
    takes them; `discard` ends a process nobody took."""

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self._process: BaseProcess | None = process
        self._socket = sock

    def take(self) -> tuple[BaseProcess, socket.socket]:
        process, self._process = self._process, None
        if process is None:
            raise RuntimeError("this engine process was already taken or discarded")
        return process, self._socket

    def discard(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.exitcode is None:
            process.kill()
        process.join()
        self._socket.close()


def spawn_engine(config: EngineConfig, main: EngineMain = engine_process_main) -> SpawnedEngine:
    """Start an engine process (`main(its socket, config)` in a fresh interpreter)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = multiprocessing.get_context("spawn").Process(
        target=main, args=(theirs, config), name="ember-worker", daemon=True
    )
    try:
        process.start()
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return SpawnedEngine(process, ours)


def prestart_engine(config: ServerConfig) -> SpawnedEngine | None:
    """The engine process of a server about to start (`ember serve`, `ember worker`), started
    now, before the server's own imports; None for an engine in the server's process."""
    return None if config.in_process else spawn_engine(worker_engine_config(config.engine))
