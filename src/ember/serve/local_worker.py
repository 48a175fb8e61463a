"""`ember serve --queue`'s own worker: the queue worker's pull loop beside the engine.

`ember worker` (`queue_worker.py`) forwards each job to an engine server of its own as the HTTP
request it is; here the engine server is this process. The jobs go to a second listener on a
free loopback port whose app shares the engine client, model and metrics but has no keys: a
job was its tenant's when it was submitted (as on a remote worker, whose local server has no
keys either), and the job's tenant, class and weight come with it for the scheduler. Its rate
limiter is its own: the job's tokens were charged to the tenant at submit. Its uvicorn leaves
the signals to the main server, which stops it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket

import aiohttp
import uvicorn
from starlette.types import ASGIApp

from ember.queue.job_store import JobQueue
from ember.serve.config import ServerConfig
from ember.serve.queue_worker import QueueWorker, WorkerConfig

logger = logging.getLogger("ember.serve")


class LocalQueueWorker:
    def __init__(self, config: ServerConfig, name: str = "ember-serve-local-worker") -> None:
        self._config = config
        self._name = name
        self._socket = socket.socket()
        self._http_server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: QueueWorker | None = None
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def open_config(config: ServerConfig) -> ServerConfig:
        """The loopback listener's settings: the server's, without keys or the async API, and
        taking each job's tenant from its queue worker's header."""
        return dataclasses.replace(config, host="127.0.0.1", port=0, tenants_file=None,
                                   api_key=None, queue=None, trust_job_tenant=True)  # fmt: skip

    async def start(self, app: ASGIApp, queue: JobQueue, nats_url: str) -> None:
        """`app`: the engine's routes for `open_config(config)`."""
        self._socket.bind(("127.0.0.1", 0))
        host, port = self._socket.getsockname()[:2]
        uv_config = uvicorn.Config(app, ws="none", log_config=None, lifespan="off",
                                   log_level="warning")  # fmt: skip
        self._http_server = _QuietServer(uv_config)
        self._tasks.append(asyncio.create_task(self._http_server.serve(sockets=[self._socket])))
        room = max(1, self._config.engine.max_num_seqs)
        self._session = aiohttp.ClientSession(
            f"http://{host}:{port}",
            connector=aiohttp.TCPConnector(limit=room),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        worker_config = WorkerConfig(
            nats_url=nats_url,
            server=self._config,
            max_concurrent_jobs=room,
            name=self._name,
        )
        self._worker = QueueWorker(worker_config, queue, self._session)
        self._tasks.append(asyncio.create_task(self._worker.run()))
        logger.info("local worker takes jobs (engine at http://%s:%d)", host, port)

    def stop_fetching(self) -> None:
        """Draining: jobs not yet taken wait in the queue for another worker."""
        if self._worker is not None:
            self._worker.stop("draining")

    async def stop(self) -> None:
        """Stops fetching, lets running jobs finish for the shutdown grace period, hands the
        rest back, then closes the listener."""
        if self._worker is not None:
            self._worker.stop("shutting down")
            with contextlib.suppress(Exception):
                await self._tasks[-1]
        if self._session is not None:
            await self._session.close()
        if self._http_server is not None:
            self._http_server.should_exit = True
            with contextlib.suppress(Exception):
                await self._tasks[0]
        self._socket.close()


class _QuietServer(uvicorn.Server):
    """The main server owns SIGTERM/SIGINT; this one stops when told."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield
