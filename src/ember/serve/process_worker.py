"""The engine in a worker process of its own, so a crash in native code spares the server.

The worker is started with the `spawn` method (a fresh interpreter: no copied event loop,
threads or CUDA state) and talks to the server over a Unix socket pair in length-prefixed
MessagePack frames (worker_protocol). It exits when told to, or when the server's end of the
socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from ember.engine.config import EngineConfig
from ember.errors import EmberError
from ember.gpu import warmup
from ember.serve.engine_spawn import SpawnedEngine, spawn_engine
from ember.serve.worker_protocol import (
    FRAME_HEADER,
    SERVER_MESSAGES,
    ChannelClosedError,
    FrameSocket,
    ServerMessage,
    Shutdown,
    WorkerFailed,
    WorkerMessage,
    WorkerReady,
    decode_worker_message,
    encode_frame,
)


def worker_main(sock: socket.socket, config: EngineConfig) -> None:
    """Entry point of the worker process."""
    # Signals for the server's process group (Ctrl-C, `timeout`, `kill -- -PGID`) must not end
    # the worker behind the server's back: the server drains, then tells the worker to stop.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.device != "cpu":
        # The driver's start-up (cuInit, the primary context) beside the model's loading.
        warmup.start()
    # The engine's modules only here: the server's process imports this module, not them.
    from ember.engine.llm_engine import LLMEngine
    from ember.serve.engine_loop import EngineLoop

    channel = FrameSocket(sock, SERVER_MESSAGES)
    try:
        engine = LLMEngine(config)
    except EmberError as error:
        channel.send(WorkerFailed(str(error)))
        sys.exit(1)
    channel.send(WorkerReady.of(engine))
    try:
        with contextlib.suppress(ChannelClosedError, BrokenPipeError, ConnectionResetError):
            EngineLoop(engine, channel, channel.send).run()
    finally:
        engine.close()
    channel.close()


class ProcessWorker:
    """The server's handle on one worker process."""

    def __init__(self, config: EngineConfig, spawned: SpawnedEngine | None = None) -> None:
        """`spawned`: a process already started for `config` (`spawn_engine`), to adopt."""
        self._config = config
        self._spawned = spawned
        self._process: BaseProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._exited: asyncio.Future[str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, on_message: Callable[[WorkerMessage], None]) -> None:
        """Start the process; every message it sends, `WorkerReady` first, goes to `on_message`
        on the event loop."""
        loop = asyncio.get_running_loop()
        spawned, self._spawned = self._spawned, None
        if spawned is None:
            # `worker_main` as this module holds it now (a profiling script replaces it).
            spawned = await loop.run_in_executor(None, spawn_engine, self._config, worker_main)
        process, ours = spawned.take()
        self._process = process
        exited = self._exited = loop.create_future()

        def reap() -> None:
            loop.remove_reader(process.sentinel)
            process.join()
            if not exited.done():
                exited.set_result(_describe_exit(process.exitcode))

        loop.add_reader(process.sentinel, reap)
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._reader_task = asyncio.create_task(_read_frames(reader, on_message))

    def send(self, message: ServerMessage) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_frame(message))

    async def wait_exit(self) -> str:
        """Wait until the process has exited; how it ended, in words."""
        if self._exited is None:
            return "never started"
        how = await asyncio.shield(self._exited)
        if self._reader_task is not None:
            # Messages the worker sent before it died are still delivered, in order.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._reader_task)
        return how

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit; kill it if it has not within `timeout` seconds."""
        process = self._process
        if process is None:
            return
        self.send(Shutdown())
        try:
            await asyncio.wait_for(self.wait_exit(), timeout)
        except TimeoutError:
            self.kill()
            await self.wait_exit()
        finally:
            if self._writer is not None:
                self._writer.close()

    def kill(self) -> None:
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()


async def _read_frames(
    reader: asyncio.StreamReader, on_message: Callable[[WorkerMessage], None]
) -> None:
    header_size = FRAME_HEADER.size
    while True:
        try:
            header = await reader.readexactly(header_size)
            (length,) = FRAME_HEADER.unpack(header)
            payload = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        on_message(decode_worker_message(payload))


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exited with status {exitcode}"
