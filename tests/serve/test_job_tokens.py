"""A job's tokens: the bound reserved at submit, and the settlement from the worker's usage."""

from __future__ import annotations

import asyncio

import msgspec

from ember.queue.job import Job, JobKind, JobStatus
from ember.serve.job_tokens import JobTokens, token_bound
from ember.serve.rate_limits import RateLimiter
from ember.serve.service_classes import DEFAULT_SERVICE_CLASSES
from ember.serve.tenants import Tenant, TenantLimits


def test_the_bound_is_each_choices_prompt_plus_max_tokens_or_the_contexts_rest() -> None:
    assert token_bound([10, 20], n=2, max_tokens=5, context_length=100) == 2 * 15 + 2 * 25
    assert token_bound([10], n=3, max_tokens=None, context_length=100) == 300
    assert token_bound([150], n=1, max_tokens=None, context_length=100) == 150
    assert token_bound([], n=1, max_tokens=5, context_length=100) == 0


class FakeQueue:
    """What `JobTokens` asks of a `JobQueue`: final-state callbacks and stored results."""

    def __init__(self, result: bytes | None) -> None:
        self.result = result
        self.callbacks: dict[str, object] = {}

    async def when_final(self, job_id: str, callback: object) -> asyncio.Future[Job | None]:
        self.callbacks[job_id] = callback
        return asyncio.get_running_loop().create_future()

    async def result_bytes(self, job: Job) -> bytes | None:
        return self.result


def settle(status: JobStatus, result: bytes | None, n: int = 1) -> tuple[float, int]:
    """(tokens left in a 1000-token bucket after reserving 300 and settling, in flight)."""
    clock = [0.0]
    limiter = RateLimiter(clock=lambda: clock[0])
    tenant = Tenant("t", DEFAULT_SERVICE_CLASSES["standard"],
                    limits=TenantLimits(tokens_per_minute=1000))  # fmt: skip
    reservation = limiter.admit(tenant, 300)
    reservation.release_slot()
    queue = FakeQueue(result)

    async def run() -> None:
        tokens = JobTokens()
        await tokens.hold(queue, "job_1", reservation, n)  # type: ignore[arg-type]
        job = Job(id="job_1", kind=JobKind.CHAT, tenant="t", status=status)
        queue.callbacks["job_1"](job)  # type: ignore[operator]
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(run())
    usage = limiter.usage(tenant)
    assert usage.tokens is not None
    return usage.tokens.available(0.0), usage.in_flight


def test_a_completed_job_pays_what_the_worker_reports_as_a_sync_request_would() -> None:
    result = msgspec.json.encode({"usage": {"prompt_tokens": 12, "completion_tokens": 30}})
    assert settle(JobStatus.COMPLETED, result) == (1000 - 42, 0)
    # Two choices of one prompt: the prompt counts for each, as `used_tokens` counts it.
    assert settle(JobStatus.COMPLETED, result, n=2) == (1000 - 54, 0)


def test_a_failed_or_cancelled_job_pays_nothing_and_an_unreadable_result_everything() -> None:
    assert settle(JobStatus.CANCELLED, None) == (1000, 0)
    assert settle(JobStatus.FAILED, None) == (1000, 0)
    assert settle(JobStatus.COMPLETED, b"not json") == (700, 0)
