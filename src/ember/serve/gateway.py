"""`ember gateway`: the HTTP front without an engine; every generation goes through the queue.

It reads only the GGUF's metadata (tokenizer, chat template, context length: no weights), so
it checks bodies as `ember serve` does and starts in a second on a machine with no GPU. The
async API answers as on `ember serve --queue`; a sync `/v1/chat/completions` or
`/v1/completions` is submitted as a job and answered when the job completes, so a gateway with
no worker running still takes requests and answers them when a worker arrives. A client that
disconnects cancels its job; one whose deadline (`--request-timeout`) passes gets a 504 and
its job is cancelled. `"stream": true` is relayed from the worker as it generates, the same SSE
stream `ember serve` gives (`gateway_stream.py`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ember.queue.job import Job, JobKind, JobStatus, new_job_id
from ember.serve.api_errors import (
    APIError,
    ClientClosedRequestError,
    DeadlineExceededError,
    InternalServerError,
)
from ember.serve.app import health, metrics_route, wrap_routes
from ember.serve.async_routes import AsyncRoutes, CheckedJob, JobSubmitter, reached
from ember.serve.config import MAX_JOB_WAIT_SECONDS, ServerConfig
from ember.serve.connection_bounds import connections_within, raise_descriptor_limit
from ember.serve.event_stream import disconnect_watch
from ember.serve.gateway_stream import JobStream
from ember.serve.log_format import configure_logging
from ember.serve.metrics import ServerMetrics
from ember.serve.openai_routes import ModelRoutes
from ember.serve.queue_connection import QueueConnection
from ember.serve.rate_limits import RateLimiter
from ember.serve.served_model import ServedModel
from ember.serve.server import connection_limits, http_server, run_event_loop
from ember.serve.tenant_directory import TenantDirectory

logger = logging.getLogger("ember.serve")


class QueuedGenerationRoutes:
    """Sync `/v1/chat/completions` and `/v1/completions`, answered by a worker via the queue."""

    def __init__(self, submitter: JobSubmitter, config: ServerConfig) -> None:
        self._jobs = submitter
        self._timeout = config.request_timeout

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, JobKind.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._answer(request, JobKind.COMPLETION)

    async def _answer(self, request: Request, kind: JobKind) -> Response:
        checked = await self._jobs.checked(request, kind, stream_refusal=None)
        if checked.stream:
            return await self._stream(request, kind, checked)
        job, _ = await self._jobs.submit(request, kind, checked, waited_on=True)
        job = await self._until_final(request, job)
        headers = {"x-ember-job-id": job.id}
        if job.status is JobStatus.COMPLETED:
            result = await self._jobs.result(job)
            if result is None:
                raise InternalServerError(f"job {job.id} completed without a stored result")
            return Response(result, headers=headers, media_type="application/json")
        raise _job_error(job)

    async def _stream(self, request: Request, kind: JobKind, checked: CheckedJob) -> Response:
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        queue = self._jobs.connection.queue
        job_id = new_job_id()
        feed = await reached(queue.chunk_feed(job_id))
        try:
            job, _ = await self._jobs.submit(request, kind, checked, job_id=job_id,
                                             waited_on=True)  # fmt: skip
            if job.id != job_id:  # an Idempotency-Key's job, made before: its chunks from now
                await feed.close()
                feed = await reached(queue.chunk_feed(job.id))
            await reached(queue.when_final(job.id, feed.end))
            if job.status.final:  # that job ended before: its update will not come again
                feed.end(job)
        except BaseException:
            await feed.close()
            raise
        stream = JobStream(self._jobs, job, feed, deadline, _job_error)
        return await stream.first(request, self._timeout)

    async def _until_final(self, request: Request, job: Job) -> Job:
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        gone = asyncio.Event()
        async with disconnect_watch(request, gone.set):
            while not job.status.final:
                left = MAX_JOB_WAIT_SECONDS if deadline is None else deadline - loop.time()
                if left <= 0:
                    break
                job = await _wait_unless(self._jobs.wait(job, min(left, MAX_JOB_WAIT_SECONDS)),
                                         gone, job)  # fmt: skip
                if gone.is_set():
                    break
        if job.status.final:
            return job
        # The client will not read this job's answer: a worker need not run it.
        await self._jobs.cancel(job)
        if gone.is_set():
            raise ClientClosedRequestError("the client closed the connection")
        raise DeadlineExceededError(
            f"job {job.id} did not finish within {self._timeout:g} s (--request-timeout); "
            "it was cancelled"
        )


async def _wait_unless(waiting: Coroutine[Any, Any, Job], gone: asyncio.Event, job: Job) -> Job:
    """`waiting`'s job, or `job` as it was if `gone` is set first."""
    task = asyncio.ensure_future(waiting)
    gone_task = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone_task.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else job


def _job_error(job: Job) -> APIError:
    """What the client of a sync request gets for a job that did not complete."""
    if job.status is JobStatus.FAILED and job.error is not None:
        found = job.error
        error = APIError(found.message, param=found.param, code=found.code)
        error.status, error.type = found.status, found.type
        return error
    error = APIError(f"job {job.id} ended {job.status}", code=f"job_{job.status}")
    error.status, error.type = (504, "timeout_error") if job.status is JobStatus.EXPIRED else (
        409, "invalid_request_error")  # fmt: skip
    return error


def build_gateway_app(
    config: ServerConfig,
    model: ServedModel,
    queue: QueueConnection,
    metrics: ServerMetrics,
    tenants: TenantDirectory,
    limiter: RateLimiter,
) -> ASGIApp:
    async def ready(request: Request) -> Response:
        status = "ready" if queue.connected else "queue_unavailable"
        body = {"status": status, "model": model.name, "role": "gateway", "nats": queue.url}
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    submitter = JobSubmitter(queue, config, model, limiter)
    routes = [
        *QueuedGenerationRoutes(submitter, config).routes(),
        *ModelRoutes(model).routes(),
        *AsyncRoutes(submitter).routes(),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        metrics_route(metrics, queue),
    ]
    return wrap_routes(routes, config, metrics, tenants, limiter)


class GatewayServer:
    def __init__(self, config: ServerConfig, max_connections: int | None = None) -> None:
        if config.queue is None:
            raise ValueError("a gateway needs a queue configuration")
        self.config = config
        self.connection_limits = connection_limits(config, max_connections)
        self.tenants = TenantDirectory.from_settings(config.tenants_file, config.api_key)
        self.limiter = RateLimiter()
        self.model = ServedModel.load(config.engine.model, config.served_model_name)
        self.metrics = ServerMetrics(self.model.name, self.model.context_length)
        self.queue = QueueConnection(config.queue, "ember-gateway")
        self.app = build_gateway_app(
            config, self.model, self.queue, self.metrics, self.tenants, self.limiter
        )

    async def serve(self, sock: socket.socket | None = None) -> None:
        await self.queue.start()
        self.tenants.start()
        try:
            server = http_server(self.app, self.config, self.connection_limits, lambda: None)
            logger.info(
                "gateway for %s on http://%s:%d, jobs at %s; %s",
                self.model.name,
                self.config.host,
                self.config.port,
                self.queue.url,
                self.tenants.describe(),
            )
            await server.serve(sockets=None if sock is None else [sock])
        finally:
            await self.tenants.stop()
            await self.queue.stop()


def run_gateway(config: ServerConfig) -> None:
    configure_logging(config.log_level)
    max_connections = connections_within(config.max_connections, raise_descriptor_limit())
    server = GatewayServer(config, max_connections)
    gc.freeze()
    run_event_loop(server.serve())
