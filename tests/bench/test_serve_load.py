"""`ember bench serve` against a real server: arrivals, the figures, errors by status."""

from __future__ import annotations

import asyncio
import itertools
import statistics

from ember.bench.serve_load import LoadPlan, format_report, run_load_async
from tests.serve.running_server import MODEL, RunningServer


def test_arrival_schedules() -> None:
    fixed = LoadPlan(url="http://x", num_requests=4, rate=2.0, arrivals="fixed")
    assert fixed.arrival_offsets() == [0.0, 0.5, 1.0, 1.5]
    burst = LoadPlan(url="http://x", num_requests=3)
    assert burst.arrival_offsets() == [0.0, 0.0, 0.0]
    poisson = LoadPlan(url="http://x", num_requests=4000, rate=10.0, seed=1).arrival_offsets()
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    assert abs(statistics.mean(gaps) - 0.1) < 0.01 and min(gaps) >= 0
    assert (
        poisson == LoadPlan(url="http://x", num_requests=4000, rate=10.0, seed=1).arrival_offsets()
    )


def test_load_report_against_ember(server: RunningServer) -> None:
    plan = LoadPlan(
        url=server.url,
        concurrency=2,
        num_requests=4,
        rate=20.0,
        arrivals="fixed",
        max_tokens=3,
        ignore_eos=True,
    )
    report = asyncio.run(run_load_async(plan))
    assert report.model == MODEL and not report.errors
    assert [r.output_tokens for r in report.records] == [3, 3, 3, 3]
    assert report.output_tokens_per_second > 0 and report.requests_per_second > 0
    ttft_p50, ttft_p99 = report.ttft_percentile(50), report.ttft_percentile(99)
    assert ttft_p50 is not None and ttft_p99 is not None and 0 < ttft_p50 <= ttft_p99
    assert report.itl_percentile(50) is not None
    text = format_report(plan, report)
    assert "output tok/s" in text and "TTFT p50 / p99" in text and "errors" in text


def test_errors_are_counted_by_status(server: RunningServer) -> None:
    plan = LoadPlan(url=server.url, model="no-such-model", num_requests=3, max_tokens=1)
    report = asyncio.run(run_load_async(plan))
    assert report.errors == {"404": 3} and not report.completed
    assert "404: 3" in format_report(plan, report)
