"""A job's tenant on its way to the worker's engine server, and that server's gate trusting it
only when started to run jobs."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ember.errors import EmberError
from ember.serve.background_lane import BackgroundLane
from ember.serve.config import ServerConfig
from ember.serve.job_tenant import JOB_TENANT_HEADER, decode_job_tenant, encode_job_tenant
from ember.serve.metrics import ServerMetrics
from ember.serve.rate_limits import RateLimiter
from ember.serve.service_classes import ServiceClass
from ember.serve.tenant_directory import TenantDirectory
from ember.serve.tenant_gate import TenantGate, tenant_of
from ember.serve.tenants import Tenant, TenantLimits

GOLD = ServiceClass("gold", -1, max_queued=7, queue_timeout=9.5, sheddable=False,
                    stream_interval=0.25)  # fmt: skip


def test_the_class_and_weight_travel_and_the_limits_do_not() -> None:
    tenant = Tenant("acme", GOLD, weight=2.5, limits=TenantLimits(tokens_per_minute=10))
    found = decode_job_tenant(encode_job_tenant(tenant))
    assert (found.name, found.service_class, found.weight) == ("acme", GOLD, 2.5)
    assert found.limits == TenantLimits() and found.keys == ()
    assert found.scheduling(None).priority == -1 and found.scheduling(3).priority == 3


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{", "not JSON"),
        ('{"name": "a"}', "not a job's tenant"),
        (encode_job_tenant(Tenant("a", GOLD)).replace('"weight":1.0', '"weight":0'),
         "positive weight"),
    ],
)  # fmt: skip
def test_a_bad_header_says_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        decode_job_tenant(text)


def gated(trust: bool) -> TenantGate:
    async def whoami(request: Request) -> JSONResponse:
        tenant = tenant_of(request.scope)
        return JSONResponse([tenant.name, tenant.service_class.name, tenant.weight])

    app = Starlette(routes=[Route("/v1/whoami", whoami)])
    metrics = ServerMetrics("m", 64)
    directory = TenantDirectory.from_settings(None, None)
    return TenantGate(
        app,
        directory,
        RateLimiter(),
        metrics.tenants,
        frozenset(),
        BackgroundLane(),
        trust_job_tenant=trust,
    )


def ask(gate: TenantGate, headers: dict[str, str]) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v1/whoami", headers=headers)

    return asyncio.run(call())


def test_only_a_job_runner_trusts_the_header() -> None:
    header = {JOB_TENANT_HEADER: encode_job_tenant(Tenant("acme", GOLD, weight=2.0))}
    assert ask(gated(True), header).json() == ["acme", "gold", 2.0]
    assert ask(gated(True), {}).json() == ["anonymous", "standard", 1.0]
    assert ask(gated(False), header).json() == ["anonymous", "standard", 1.0]
    refused = ask(gated(True), {JOB_TENANT_HEADER: "{"})
    assert refused.status_code == 400 and JOB_TENANT_HEADER in refused.json()["error"]["message"]


def test_a_job_runner_has_no_keys_of_its_own() -> None:
    with pytest.raises(EmberError, match="no --tenants or --api-key"):
        ServerConfig(trust_job_tenant=True, api_key="k")
