"""Keeps one engine worker alive: starts it, notices when it dies, starts another.

When a worker dies, the requests it held fail at once (the engine client is told), /ready
turns false, and a new worker is started after a back-off that doubles while workers keep
dying young. A worker that fails to load its model the very first time stops the server:
that is a configuration error, not a crash to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ember.errors import EmberError
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.engine_spawn import SpawnedEngine, worker_engine_config
from ember.serve.metrics import ServerMetrics
from ember.serve.process_worker import ProcessWorker
from ember.serve.restart_backoff import RestartBackoff
from ember.serve.thread_worker import ThreadWorker
from ember.serve.worker_protocol import ServerMessage, WorkerFailed, WorkerMessage, WorkerReady

logger = logging.getLogger("ember.serve")

_STOP_TIMEOUT = 10.0


class WorkerStartError(EmberError):
    """The engine worker could not load the model."""


class EngineWorker(Protocol):
    @property
    def pid(self) -> int | None: ...

    async def start(self, on_message: Callable[[WorkerMessage], None]) -> None: ...

    def send(self, message: ServerMessage) -> None: ...

    async def wait_exit(self) -> str: ...

    async def stop(self, timeout: float) -> None: ...

    def kill(self) -> None: ...


class WorkerSupervisor:
    def __init__(
        self,
        config: ServerConfig,
        client: EngineClient,
        metrics: ServerMetrics,
        prestarted: SpawnedEngine | None = None,
    ) -> None:
        """`prestarted`: the first worker's process, started already (`spawn_engine` with
        `worker_engine_config(config.engine)`), adopted by the first start."""
        self._engine_config = worker_engine_config(config.engine)
        self._prestarted = prestarted
        self._config = config
        self._client = client
        self._metrics = metrics
        self._worker: EngineWorker | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def worker_pid(self) -> int | None:
        return None if self._worker is None else self._worker.pid

    async def start(self) -> None:
        """Start the first worker and wait until it has loaded the model."""
        first_ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first_ready))
        await first_ready

    async def stop(self) -> None:
        self._stopping = True
        if self._prestarted is not None:  # never started
            self._prestarted.discard()
            self._prestarted = None
        worker = self._worker
        if worker is not None:
            await worker.stop(_STOP_TIMEOUT)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self, first_ready: asyncio.Future[None]) -> None:
        backoff = RestartBackoff(self._config.restart_backoff, self._config.max_restart_backoff)
        while not self._stopping:
            started = time.monotonic()
            how, failure = await self._run_one(first_ready)
            if self._stopping:
                return
            if not first_ready.done():
                first_ready.set_exception(
                    WorkerStartError(failure or f"the engine worker {how} while starting")
                )
                return
            delay = backoff.after_run(time.monotonic() - started)
            logger.error("engine worker %s; starting a new one in %.1f s", how, delay)
            await asyncio.sleep(delay)
            self.restarts += 1
            self._metrics.worker_restarts.inc()

    async def _run_one(self, first_ready: asyncio.Future[None]) -> tuple[str, str | None]:
        """Run one worker until it exits; how it ended, and its load error if it sent one."""
        spawned, self._prestarted = self._prestarted, None
        worker: EngineWorker
        if self._config.in_process:
            worker = ThreadWorker(self._engine_config)
            if spawned is not None:
                spawned.discard()
        else:
            worker = ProcessWorker(self._engine_config, spawned)
        self._worker = worker
        failure: str | None = None
        client = self._client

        def on_message(message: WorkerMessage) -> None:
            nonlocal failure
            if isinstance(message, WorkerReady):
                logger.info(
                    "engine worker ready: pid %d, %s, model loaded in %.2f s, %d KV blocks of "
                    "%d tokens",
                    message.pid,
                    message.device,
                    message.load_seconds,
                    message.limits.num_kv_blocks,
                    message.limits.block_size,
                )
                client.attach(worker, message)
                if not first_ready.done():
                    first_ready.set_result(None)
            elif isinstance(message, WorkerFailed):
                failure = message.message
            else:
                client.on_message(message)

        try:
            await worker.start(on_message)
        except OSError as error:
            return f"could not be started ({error})", None
        how = await worker.wait_exit()
        client.detach(how)
        return how, failure
