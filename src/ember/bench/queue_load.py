"""`ember bench queue`: jobs through Ember's async API, as fast as the queue takes them.

`concurrency` clients each submit a job (`POST /v1/async/completions`), long-poll it until it
is final (`GET /v1/jobs/{id}?wait=30`), then submit the next, until `num_jobs` are done.
Reported: jobs per second, submit -> completed latency p50/p99, and the statuses. With a
stand-in engine (a tiny model and `max_tokens` 1) the figures are the queue's own cost:
JetStream's store and delivery, the worker's fetch, store and ack, the long poll's wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from ember.errors import EmberError

_POLL_SECONDS = 30


@dataclass(frozen=True, slots=True)
class QueuePlan:
    url: str
    model: str | None = None
    api_key: str = "EMPTY"
    num_jobs: int = 200
    concurrency: int = 16
    prompt: str = "Hello"
    max_tokens: int = 1
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if min(self.num_jobs, self.concurrency, self.max_tokens) < 1:
            raise EmberError("--jobs, --concurrency and --max-tokens must be positive")


@dataclass(slots=True)
class QueueReport:
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)  # completed jobs only
    statuses: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None  # the body of the first answer that was not a job

    @property
    def jobs_per_second(self) -> float:
        return len(self.latencies) / self.duration if self.duration else 0.0

    def latency(self, q: float) -> float | None:
        return float(np.percentile(self.latencies, q)) if self.latencies else None


def run_queue_load(plan: QueuePlan) -> QueueReport:
    return asyncio.run(_run(plan))


async def _run(plan: QueuePlan) -> QueueReport:
    base = plan.url.rstrip("/")
    headers = {"Authorization": f"Bearer {plan.api_key}"}
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    report = QueueReport()
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as s:
        model = plan.model or await _first_model(s, base)
        body = {"model": model, "prompt": plan.prompt, "max_tokens": plan.max_tokens}
        remaining = iter(range(plan.num_jobs))

        async def client() -> None:
            for _ in remaining:
                status, latency, error = await _one_job(s, base, body)
                report.statuses[status] += 1
                if error is not None and report.first_error is None:
                    report.first_error = error
                if status == "completed":
                    report.latencies.append(latency)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(plan.concurrency)))
        report.duration = time.perf_counter() - started
    return report


async def _one_job(
    session: aiohttp.ClientSession, base: str, body: dict[str, object]
) -> tuple[str, float, str | None]:
    """(the job's final status or the HTTP status that ended it, seconds, an error's text)."""
    sent = time.perf_counter()
    try:
        async with session.post(f"{base}/v1/async/completions", json=body) as response:
            if response.status not in (200, 202):
                return str(response.status), 0.0, await response.text()
            job = await response.json()
        while job.get("status") not in ("completed", "failed", "cancelled", "expired"):
            url = f"{base}/v1/jobs/{job['id']}?wait={_POLL_SECONDS}"
            async with session.get(url) as response:
                if response.status != 200:
                    return str(response.status), 0.0, await response.text()
                job = await response.json()
    except (aiohttp.ClientError, TimeoutError) as failure:
        return "connection error", 0.0, repr(failure)
    problem = None if job["status"] == "completed" else str(job.get("error"))
    return str(job["status"]), time.perf_counter() - sent, problem


async def _first_model(session: aiohttp.ClientSession, base: str) -> str:
    try:
        async with session.get(f"{base}/v1/models", raise_for_status=True) as response:
            return str((await response.json())["data"][0]["id"])
    except (aiohttp.ClientError, TimeoutError, LookupError, ValueError) as error:
        raise EmberError(f"could not list the server's models ({error}); pass --model") from None


def format_queue_report(plan: QueuePlan, report: QueueReport) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}"

    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items()))
    return "\n".join(
        [
            f"server {plan.url}  jobs {plan.num_jobs}  concurrency {plan.concurrency}  "
            f"max_tokens {plan.max_tokens}",
            f"{'duration (s)':<26}{report.duration:.2f}",
            f"{'jobs/s':<26}{report.jobs_per_second:.1f}",
            f"{'submit->done p50/p99 (ms)':<26}{ms(report.latency(50))} / {ms(report.latency(99))}",
            f"{'statuses':<26}{statuses or 'none'}",
            *([f"{'first error':<26}{report.first_error[:300]}"] if report.first_error else []),
        ]
    )
