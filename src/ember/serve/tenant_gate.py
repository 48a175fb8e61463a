"""Who is calling: the API key checked on every route but the probes, and OpenAI's rate-limit
headers and the per-tenant outcome counted on every answer to a keyed request. An API request of
a background class then waits for its turn in the server's `BackgroundLane`.

With keys configured, a request without `Authorization: Bearer KEY`, or with a key that is
unknown or expired, gets 401; `/metrics` needs a key too unless `--metrics-public`. With none
configured every caller is the anonymous tenant, except on an engine server started to run
queued jobs (`trust_job_tenant`), where a job's request is its tenant's (`job_tenant.py`).
Keys are read from the tenants in force at the request's arrival (`TenantDirectory.current`),
so a key revoked by a reload is refused from the next request on, while requests already
admitted finish.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.serve.api_errors import (
    APIError,
    BadRequestError,
    InvalidAPIKeyError,
    api_error_response,
)
from ember.serve.api_keys import key_hash, short_id
from ember.serve.background_lane import BackgroundLane
from ember.serve.job_tenant import JOB_TENANT_HEADER, decode_job_tenant
from ember.serve.metrics import TenantMetrics
from ember.serve.rate_limits import RateLimiter
from ember.serve.tenant_directory import TenantDirectory
from ember.serve.tenants import ANONYMOUS, Tenant

logger = logging.getLogger("ember.serve")

_TENANT = "ember.tenant"
# Set by the error handler (app.py) for the gate's outcome label: a 503 "shed" is its own.
ERROR_CODE = "ember.error_code"
_OUTCOME_OF_STATUS = {401: "401", 404: "404", 429: "429", 503: "503"}


def tenant_of(scope: Scope) -> Tenant:
    """The caller's tenant, as the gate found it (only routes behind the gate ask)."""
    tenant: Tenant = scope["state"][_TENANT]
    return tenant


class TenantGate:
    def __init__(
        self,
        app: ASGIApp,
        directory: TenantDirectory,
        limiter: RateLimiter,
        metrics: TenantMetrics,
        open_paths: frozenset[str],
        lane: BackgroundLane,
        *,
        trust_job_tenant: bool = False,
    ) -> None:
        """`lane`: where a background class's API requests wait their turn once their key is
        checked, before their body is read and worked on."""
        self._app = app
        self._lane = lane
        self._directory = directory
        self._limiter = limiter
        self._metrics = metrics
        self._open_paths = open_paths
        self._trust_job_tenant = trust_job_tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        counted = scope["path"].startswith("/v1/")
        config = self._directory.current
        if config.open:
            tenant = config.tenants[ANONYMOUS]
            if self._trust_job_tenant:
                found_job = self._job_tenant(Headers(scope=scope))
                if isinstance(found_job, BadRequestError):
                    await _answer(found_job, scope, send)
                    return
                tenant = found_job or tenant
        else:
            found = self._authenticate(Headers(scope=scope))
            if isinstance(found, InvalidAPIKeyError):
                if counted:
                    self._metrics.on_outcome("", "", "401")
                await _answer(found, scope, send)
                return
            tenant = found
        if counted and tenant.service_class.background:
            await self._lane.turn()
        state = scope.setdefault("state", {})
        state[_TENANT] = tenant
        limiter, metrics = self._limiter, self._metrics
        keyed = not config.open

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                if keyed:
                    message["headers"] = [*message.get("headers", ()), *limiter.headers(tenant)]
                if counted:
                    status = message["status"]
                    outcome = "served" if 200 <= status < 300 else _OUTCOME_OF_STATUS.get(status)
                    if status == 503 and state.get(ERROR_CODE) == "shed":
                        outcome = "shed"
                    metrics.on_outcome(tenant.name, tenant.service_class.name, outcome or "other")
            await send(message)

        await self._app(scope, receive, send_with_limits)

    @staticmethod
    def _job_tenant(headers: Headers) -> Tenant | BadRequestError | None:
        """The tenant of the job this request runs, as its queue worker says (None: not a job)."""
        text = headers.get(JOB_TENANT_HEADER)
        if text is None:
            return None
        try:
            return decode_job_tenant(text)
        except ValueError as error:
            return BadRequestError(str(error))

    def _authenticate(self, headers: Headers) -> Tenant | InvalidAPIKeyError:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return InvalidAPIKeyError(
                "this server requires an API key: send it as 'Authorization: Bearer KEY'"
            )
        match = self._directory.current.match(key)
        key_id = short_id(key_hash(key))
        if match is None:
            logger.info("refused an unknown API key (id %s)", key_id)
            return InvalidAPIKeyError(f"the API key with id {key_id} is not valid on this server")
        now = datetime.now(UTC)
        if match.expired(now):
            logger.info("refused an expired API key (id %s, tenant %s)", key_id, match.tenant.name)
            return InvalidAPIKeyError(f"the API key with id {key_id} has expired")
        return match.tenant


async def _answer(error: APIError, scope: Scope, send: Send) -> None:
    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await api_error_response(error)(scope, no_body, send)
