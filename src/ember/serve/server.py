"""`ember serve`: start the engine worker, then serve HTTP until SIGTERM/SIGINT, then drain.

The server listens only once a worker has loaded the model, so a model that cannot load is a
startup error with a clear message rather than a server that never becomes ready. On SIGTERM
it stops accepting connections, answers new requests on open connections with 503, lets
in-flight requests finish for `--shutdown-grace-period` seconds, ends the rest with an error
event, stops the worker and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from ember.serve.api_errors import ServiceUnavailableError
from ember.serve.app import build_app
from ember.serve.config import ServerConfig
from ember.serve.connection_bounds import (
    ConnectionBounds,
    ConnectionLimits,
    connections_within,
    raise_descriptor_limit,
)
from ember.serve.engine_client import EngineClient
from ember.serve.engine_spawn import SpawnedEngine
from ember.serve.http_protocol import bounded_protocol
from ember.serve.log_format import configure_logging
from ember.serve.metrics import ServerMetrics
from ember.serve.queue_connection import QueueConnection
from ember.serve.rate_limits import RateLimiter
from ember.serve.served_model import ServedModel
from ember.serve.supervisor import WorkerSupervisor
from ember.serve.tenant_directory import TenantDirectory

if TYPE_CHECKING:
    from ember.serve.local_worker import LocalQueueWorker

logger = logging.getLogger("ember.serve")

# Time after the grace period for the error events to reach clients before connections close.
_FLUSH_SECONDS = 2.0
# Seconds a connection is kept between requests (uvicorn's default).
_KEEP_ALIVE_SECONDS = 5
# A body past the limit is dropped as it arrives, up to this many times the limit, so that the
# connection survives its 413; a larger one is cut off.
_DISCARDED_BODIES = 4
_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EmberServer:
    def __init__(
        self,
        config: ServerConfig,
        max_connections: int | None = None,
        prestarted: SpawnedEngine | None = None,
    ) -> None:
        """`max_connections`: `config.max_connections` as the descriptor limit allows.
        `prestarted`: the engine worker's process, started already (see `engine_spawn`)."""
        self.config = config
        self.connection_limits = connection_limits(config, max_connections)
        # First: a tenants file that cannot be used stops the start before the model loads
        # (here; an engine process started early is ended by `run_server`).
        self.tenants = TenantDirectory.from_settings(config.tenants_file, config.api_key)
        self.limiter = RateLimiter()
        self.model = ServedModel.load(config.engine.model, config.served_model_name)
        self.metrics = ServerMetrics(self.model.name, self.model.context_length)
        self.client = EngineClient(config, self.metrics)
        self.supervisor = WorkerSupervisor(config, self.client, self.metrics, prestarted)
        self.queue = None if config.queue is None else QueueConnection(config.queue, "ember-serve")
        self.local_worker: LocalQueueWorker | None = None
        if config.queue is not None and config.queue.local_worker:
            from ember.serve.local_worker import LocalQueueWorker

            self.local_worker = LocalQueueWorker(config)
            open_config = LocalQueueWorker.open_config(config)
            self._local_app = build_app(
                open_config,
                self.model,
                self.client,
                self.supervisor,
                self.metrics,
                TenantDirectory.from_settings(None, None),
                # Not the server's: a job's tenant arrives here without its limits, and
                # sharing the buckets would reset them; the submit charged the tenant.
                RateLimiter(),
            )
        self.app = build_app(
            config,
            self.model,
            self.client,
            self.supervisor,
            self.metrics,
            self.tenants,
            self.limiter,
            self.queue,
        )

    async def serve(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self.queue is not None:
            await self.queue.start()  # first: a queue that cannot be reached stops the start
        try:
            await self.supervisor.start()
        except BaseException:
            if self.queue is not None:
                await self.queue.stop()
            raise
        self.tenants.start()
        try:
            if self.local_worker is not None and self.queue is not None:
                queue = self.queue.queue
                await self.local_worker.start(self._local_app, queue, queue.url)

            # uvicorn calls this from a signal handler: hop onto the loop before touching state.
            def on_exit() -> None:
                loop.call_soon_threadsafe(self.drain)

            server = http_server(self.app, self.config, self.connection_limits, on_exit)
            logger.info(
                "serving %s on http://%s:%d, up to %d connections; %s",
                self.model.name,
                self.config.host,
                self.config.port,
                self.connection_limits.max_connections,
                self.tenants.describe(),
            )
            await server.serve(sockets=None if sock is None else [sock])
        finally:
            await self.tenants.stop()
            if self.local_worker is not None:
                await self.local_worker.stop()
            await self.supervisor.stop()
            if self.queue is not None:
                await self.queue.stop()

    def drain(self) -> None:
        if self.client.draining:
            return
        logger.info(
            "draining: %d sequences in flight get up to %.0f s to finish",
            self.client.num_in_flight,
            self.config.shutdown_grace_period,
        )
        self.client.draining = True
        if self.local_worker is not None:
            self.local_worker.stop_fetching()
        asyncio.get_running_loop().call_later(
            self.config.shutdown_grace_period, self._end_remaining
        )

    def _end_remaining(self) -> None:
        if self.client.num_in_flight:
            logger.warning(
                "grace period over: ending %d sequences still in flight", self.client.num_in_flight
            )
        self.client.fail_all(
            ServiceUnavailableError(
                "the server shut down before this request finished", code="draining"
            )
        )


def connection_limits(config: ServerConfig, max_connections: int | None) -> ConnectionLimits:
    """`max_connections`: `config.max_connections` as the descriptor limit allows."""
    return ConnectionLimits(
        max_connections=max_connections or config.max_connections,
        max_header_bytes=config.max_header_bytes,
        read_timeout=config.read_timeout,
        max_discarded_bytes=_DISCARDED_BODIES * config.max_body_bytes,
    )


def http_server(
    app: ASGIApp, config: ServerConfig, limits: ConnectionLimits, on_exit: Callable[[], None]
) -> uvicorn.Server:
    """uvicorn with Ember's bounded protocol; `on_exit` runs first when SIGTERM/SIGINT comes."""
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=bounded_protocol(ConnectionBounds(limits)),
        ws="none",
        # Logging is the root logger's, escaping client text (run_server).
        log_config=None,
        log_level=config.log_level,
        lifespan="off",
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=math.ceil(config.shutdown_grace_period + _FLUSH_SECONDS),
    )
    return _DrainingServer(uv_config, on_exit)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling us first when a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after its shutdown, which would kill the process before
        # the worker is stopped; a drained shutdown is a clean exit (status 0) instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SHUTDOWN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def run_server(config: ServerConfig, prestarted: SpawnedEngine | None = None) -> None:
    """`prestarted`: the engine worker's process, started already (`ember serve` starts it
    before importing this module); ended here if the server cannot start."""
    configure_logging(config.log_level)
    max_connections = connections_within(config.max_connections, raise_descriptor_limit())
    try:
        server = EmberServer(config, max_connections, prestarted)
        # The tokenizer's and template's objects live as long as the process: out of the
        # cyclic collector's sight, its full collections during a burst of requests take no
        # time.
        gc.freeze()
        run_event_loop(server.serve())
    finally:
        if prestarted is not None:  # a no-op once the supervisor has taken it
            prestarted.discard()


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop's event loop where it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
