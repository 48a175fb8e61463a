"""The ASGI application: OpenAI routes, health and metrics, and errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.serve.api_errors import (
    APIError,
    ClientClosedRequestError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
    api_error_response,
    quoted,
)
from ember.serve.background_lane import BackgroundLane
from ember.serve.config import ServerConfig
from ember.serve.cross_site import CrossSiteGuard
from ember.serve.engine_client import EngineClient
from ember.serve.generation_runner import GenerationRunner
from ember.serve.http_body import ClientGoneError
from ember.serve.metrics import QueueMetrics, ServerMetrics
from ember.serve.openai_routes import OpenAIRoutes
from ember.serve.queue_connection import QueueConnection
from ember.serve.rate_limits import RateLimiter
from ember.serve.request_ids import RequestIds
from ember.serve.response_store import ResponseStore
from ember.serve.responses_api import ResponsesRoutes
from ember.serve.served_model import ServedModel
from ember.serve.supervisor import WorkerSupervisor
from ember.serve.system_fingerprint import system_fingerprint
from ember.serve.tenant_directory import TenantDirectory
from ember.serve.tenant_gate import ERROR_CODE, TenantGate
from ember.serve.tokenizer_routes import TokenizerRoutes

logger = logging.getLogger("ember.serve")

_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Probes: answered whatever the Host or Origin (a load balancer's Host is its own business).
PROBE_PATHS = frozenset({"/health", "/ready"})
# A scrape waits this long at most for the queue's depth (Prometheus' default timeout is 10 s).
_QUEUE_SCRAPE_SECONDS = 2.0


def build_app(
    config: ServerConfig,
    model: ServedModel,
    client: EngineClient,
    supervisor: WorkerSupervisor,
    metrics: ServerMetrics,
    tenants: TenantDirectory,
    limiter: RateLimiter,
    queue: QueueConnection | None = None,
) -> ASGIApp:
    """`queue`: the async API's job queue (`ember serve --queue`), or None."""

    async def ready(request: Request) -> Response:
        info = client.worker_info
        if client.draining:
            status = "draining"
        elif info is None:
            status = "starting" if supervisor.restarts == 0 else "restarting"
        elif queue is not None and not queue.connected:
            status = "queue_unavailable"
        else:
            status = "ready"
        body = {
            "status": status,
            "model": model.name,
            "worker_pid": None if info is None else info.pid,
            "worker_restarts": supervisor.restarts,
        }
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    lane = BackgroundLane()
    runner = GenerationRunner(config, model, client, limiter, metrics.tenants, lane)
    fingerprint = system_fingerprint(model.path)
    routes = [
        *OpenAIRoutes(runner, fingerprint).routes(),
        *ResponsesRoutes(runner, ResponseStore()).routes(),
        *TokenizerRoutes(runner).routes(),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        metrics_route(metrics, queue),
    ]
    if queue is not None:
        from ember.serve.async_routes import AsyncRoutes, JobSubmitter

        routes += AsyncRoutes(JobSubmitter(queue, config, model, limiter)).routes()
    return wrap_routes(routes, config, metrics, tenants, limiter, lane)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def metrics_route(metrics: ServerMetrics, queue: QueueConnection | None) -> Route:
    """/metrics; with a queue, its depth is read from JetStream at each scrape."""
    queue_metrics = None if queue is None else QueueMetrics(metrics.registry)

    async def prometheus(request: Request) -> Response:
        if queue is not None and queue_metrics is not None:
            await _refresh_queue_metrics(queue, queue_metrics)
        return Response(metrics.exposition(), media_type=_PROMETHEUS_TYPE)

    return Route("/metrics", prometheus, methods=["GET"])


async def _refresh_queue_metrics(queue: QueueConnection, queue_metrics: QueueMetrics) -> None:
    if not queue.connected:
        queue_metrics.on_unreachable()
        return
    from ember.serve.async_routes import reached

    try:
        async with asyncio.timeout(_QUEUE_SCRAPE_SECONDS):
            depth = await reached(queue.queue.depth())
    except (TimeoutError, APIError) as error:
        logger.warning("could not read the job queue's depth for /metrics: %s", error)
        queue_metrics.on_unreachable()
        return
    queue_metrics.update(depth)


def wrap_routes(
    routes: list[Route],
    config: ServerConfig,
    metrics: ServerMetrics,
    tenants: TenantDirectory,
    limiter: RateLimiter,
    lane: BackgroundLane | None = None,
) -> ASGIApp:
    """The routes behind the middleware every server has: request ids, response counts, the
    cross-site guard, the tenant gate, errors in OpenAI's shape. `lane`: the server's lane for
    background classes' work (a new one if the routes hold no other user of it)."""
    app = Starlette(
        routes=routes,
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_exception,
            ClientGoneError: _client_gone,
            Exception: _unexpected,
        },
    )
    known_paths = {route.path for route in routes}
    keyless = PROBE_PATHS | {"/metrics"} if config.metrics_public else PROBE_PATHS
    lane = BackgroundLane() if lane is None else lane
    gated = TenantGate(
        app,
        tenants,
        limiter,
        metrics.tenants,
        keyless,
        lane,
        trust_job_tenant=config.trust_job_tenant,
    )
    guarded = CrossSiteGuard(gated, config, PROBE_PATHS)
    return RequestIds(HTTPMetricsMiddleware(guarded, metrics, known_paths))


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    request.scope.setdefault("state", {})[ERROR_CODE] = error.code
    return api_error_response(error)


async def _http_exception(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    path = request.scope["path"]  # as the client sent it (request.url drops some characters)
    if error.status_code == 405:
        return api_error_response(
            MethodNotAllowedError(f"{request.method} is not allowed on {quoted(path)}")
        )
    if error.status_code == 404:
        return api_error_response(NotFoundError(f"no route {quoted(path)}"))
    generic = APIError(str(error.detail))
    generic.status = error.status_code
    return api_error_response(generic)


async def _client_gone(request: Request, error: Exception) -> Response:
    return api_error_response(ClientClosedRequestError("the client closed the connection"))


async def _unexpected(request: Request, error: Exception) -> Response:
    # The path and the error's message are the client's text: the log escapes them and cuts
    # them short (log_format); the body is named by its size only.
    size = request.headers.get("content-length", "")
    logger.exception(
        "unexpected error serving %s %s (%s body bytes)",
        request.method,
        ascii(request.scope["path"]),
        size if size.isdigit() else "unknown",
    )
    return api_error_response(
        InternalServerError("the server failed to handle this request; see the server log")
    )


class HTTPMetricsMiddleware:
    """Counts responses by endpoint and status, outermost, so even 500s are counted."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, known_paths: set[str]) -> None:
        self._app = app
        self._metrics = metrics
        self._known_paths = known_paths
        # `/v1/models/{model_id:path}` counts as `/v1/models/{model_id}`, whatever the id: the
        # label's values stay bounded. The longest suffix first: `/v1/jobs/{job_id}/cancel`
        # before `/v1/jobs/{job_id}`.
        templates = [
            (path.partition("{")[0], path.rpartition("}")[2], re.sub(r":\w+}", "}", path))
            for path in known_paths
            if "{" in path
        ]
        self._templates = sorted(templates, key=lambda t: (-len(t[1]), t[0]))

    def _templated(self, path: str) -> str:
        for prefix, suffix, label in self._templates:
            if (path.startswith(prefix) and path.endswith(suffix)
                    and len(path) > len(prefix) + len(suffix)):  # fmt: skip
                return label
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self._known_paths else self._templated(path)
        metrics = self._metrics

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.on_http_response(endpoint, message["status"])
            await send(message)

        await self._app(scope, receive, counting_send)
