"""`--in-process`: the engine on a thread of the server process, for comparison and debugging.

Same loop and messages as the worker process, passed as objects (no pickling); the NumPy
backend releases the GIL inside its matrix products, so the event loop keeps serving. A crash
here takes the server with it: that is what the worker process is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable

from ember.engine.config import EngineConfig
from ember.errors import EmberError
from ember.serve.worker_protocol import (
    ServerMessage,
    Shutdown,
    WorkerFailed,
    WorkerMessage,
    WorkerReady,
)


class _QueueInbox:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[ServerMessage] = queue.SimpleQueue()

    def receive_all(self, block: bool) -> list[ServerMessage]:
        messages: list[ServerMessage] = []
        if block:
            messages.append(self.queue.get())
        while True:
            try:
                messages.append(self.queue.get_nowait())
            except queue.Empty:
                return messages


class ThreadWorker:
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._inbox = _QueueInbox()
        self._exited: asyncio.Future[str] | None = None

    @property
    def pid(self) -> int | None:
        return os.getpid()

    async def start(self, on_message: Callable[[WorkerMessage], None]) -> None:
        loop = asyncio.get_running_loop()
        exited = self._exited = loop.create_future()

        def deliver(message: WorkerMessage) -> None:
            loop.call_soon_threadsafe(on_message, message)

        def finish(how: str) -> None:
            if not exited.done():
                exited.set_result(how)

        def run() -> None:
            # The engine's modules only for an engine in this process (`--in-process`).
            from ember.engine.llm_engine import LLMEngine
            from ember.serve.engine_loop import EngineLoop

            how = "stopped"
            try:
                engine = LLMEngine(self._config)
                deliver(WorkerReady.of(engine))
                try:
                    EngineLoop(engine, self._inbox, deliver).run()
                finally:
                    engine.close()
            except EmberError as error:
                deliver(WorkerFailed(str(error)))
                how = f"failed: {error}"
            except BaseException as error:
                how = f"crashed: {type(error).__name__}: {error}"
                raise
            finally:
                loop.call_soon_threadsafe(finish, how)

        threading.Thread(target=run, name="ember-engine", daemon=True).start()

    def send(self, message: ServerMessage) -> None:
        self._inbox.queue.put(message)

    async def wait_exit(self) -> str:
        if self._exited is None:
            return "never started"
        return await asyncio.shield(self._exited)

    async def stop(self, timeout: float) -> None:
        self.send(Shutdown())
        # A thread cannot be killed; if it does not stop, it ends with the process (a daemon).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_exit(), timeout)

    def kill(self) -> None:
        self.send(Shutdown())
