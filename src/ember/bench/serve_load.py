"""`ember bench serve`: streaming load against any OpenAI-compatible server.

Requests arrive all at once, at a fixed rate or as a Poisson process; at most `concurrency`
are in flight, the rest wait for a free client. Every request streams (with
`stream_options.include_usage`, so output tokens are the server's own count when it gives
one). TTFT runs from sending a request to its first content; ITL is the gap between
consecutive content chunks, as vLLM's benchmark measures it.

The client is aiohttp: on the H100 host (2026-11-24), 16 streams of 128 tokens from httpx took
9.9 thousand tok/s out of the server and a TTFT of 28 ms, aiohttp 11.6 thousand and 22 ms, a
raw-socket client 12.5 thousand and 14 ms: a slow client is measured as a slow server. Each
process opens its connections before the clock starts (one cheap request per client, as a
client with a warm keep-alive pool would have them), so TCP and HTTP connection set-up is not
counted against the server either. Even so one process costs ~0.1 ms per chunk it receives,
so the load can be split over `processes` processes, each with its share of the clients and
of the arrivals, started together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import queue
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import aiohttp
import numpy as np

from ember.errors import EmberError


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str
    model: str | None = None
    api_key: str = "EMPTY"
    endpoint: str = "chat"  # or "completions"
    concurrency: int = 16
    num_requests: int = 64
    rate: float | None = None  # arrivals per second; None: all at once
    arrivals: str = "poisson"  # or "fixed"
    prompt: str = "Write a short story about a lighthouse keeper."
    max_tokens: int = 64
    ignore_eos: bool = False
    temperature: float = 0.0
    timeout: float = 600.0
    seed: int = 0
    processes: int = 1  # load-generating processes; at most `concurrency` are used
    # Fields merged into every request's body (a response_format, tools...); None: none.
    extra_body: dict[str, object] | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.num_requests < 1 or self.max_tokens < 1:
            raise EmberError("--concurrency, --requests and --max-tokens must be positive")
        if self.processes < 1:
            raise EmberError("--processes must be positive")
        if self.rate is not None and self.rate <= 0:
            raise EmberError("--rate must be positive")
        if self.endpoint not in ("chat", "completions"):
            raise EmberError("--endpoint must be 'chat' or 'completions'")
        if self.arrivals not in ("poisson", "fixed"):
            raise EmberError("--arrivals must be 'poisson' or 'fixed'")

    def arrival_offsets(self) -> list[float]:
        """Seconds after the start at which each request arrives."""
        if self.rate is None:
            return [0.0] * self.num_requests
        if self.arrivals == "fixed":
            return [i / self.rate for i in range(self.num_requests)]
        rng = random.Random(self.seed)
        offsets, now = [], 0.0
        for _ in range(self.num_requests):
            offsets.append(now)
            now += rng.expovariate(self.rate)
        return offsets


@dataclass(frozen=True, slots=True)
class TenantLoad:
    """One tenant's share of a `--mix`: a label for the table and the plan run with its key."""

    label: str
    plan: LoadPlan


def parse_mix(spec: str, base: LoadPlan, processes: int | None = None) -> list[TenantLoad]:
    """`label:key:concurrency[:max_tokens[:requests[:body_file]]],...`: each tenant is `base`
    with its key, its concurrency, its max_tokens, its number of requests (default:
    `base.num_requests`) and the fields of a JSON file merged into its bodies (default:
    `base.extra_body`), sent from `processes` processes (default: `default_processes` of its
    concurrency). A few interactive requests beside thousands of batch ones measure the
    interactive tenant while the batch load lasts; 8 constrained streams beside 56 free ones
    measure what a grammar costs its neighbours."""
    loads: list[TenantLoad] = []
    for number, entry in enumerate(spec.split(",")):
        fields = entry.strip().split(":")
        if len(fields) not in (3, 4, 5, 6) or not all(fields):
            raise EmberError(
                f"--mix entry {entry.strip()!r} is not "
                "label:key:concurrency[:max_tokens[:requests[:body_file]]] "
                "(e.g. interactive:KEY1:4:128:64,batch:KEY2:256:128)"
            )
        label, key, *numbers = fields[:5]
        extra_body = read_extra_body(fields[5]) if len(fields) == 6 else base.extra_body
        if not all(n.isdigit() for n in numbers):
            raise EmberError(
                f"--mix entry {label!r}: concurrency, max_tokens and requests are integers"
            )
        if label in (load.label for load in loads):
            raise EmberError(f"--mix names {label!r} twice; give each tenant its own label")
        plan = dataclasses.replace(
            base,
            api_key=key,
            concurrency=int(numbers[0]),
            max_tokens=int(numbers[1]) if len(numbers) >= 2 else base.max_tokens,
            num_requests=int(numbers[2]) if len(numbers) == 3 else base.num_requests,
            extra_body=extra_body,
            seed=base.seed + number,  # Poisson arrivals of their own
            processes=processes or default_processes(int(numbers[0])),
        )
        loads.append(TenantLoad(label, plan))
    return loads


@dataclass(slots=True)
class RequestRecord:
    outcome: str = "ok"  # "ok", an HTTP status, "stream error", "timeout", "connection error"
    sent: float = 0.0  # time.perf_counter() when the request was sent
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    output_tokens: int = 0
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class LoadReport:
    model: str
    duration: float
    records: list[RequestRecord]

    @property
    def completed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.outcome == "ok"]

    @property
    def requests_per_second(self) -> float:
        return len(self.completed) / self.duration if self.duration > 0 else 0.0

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.completed)

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.duration if self.duration > 0 else 0.0

    def ttft_percentile(self, q: float) -> float | None:
        return _percentile([r.ttft for r in self.completed if r.ttft is not None], q)

    def itl_percentile(self, q: float) -> float | None:
        return _percentile([gap for r in self.completed for gap in r.itls], q)

    @property
    def errors(self) -> Counter[str]:
        return Counter(r.outcome for r in self.records if r.outcome != "ok")


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def default_processes(concurrency: int) -> int:
    """A process per 64 concurrent streams, leaving most of the machine's cores to others
    (the server under test may share it)."""
    return max(1, min(concurrency // 64, (os.cpu_count() or 1) // 4))


def run_load(plan: LoadPlan) -> LoadReport:
    processes = min(plan.processes, plan.concurrency, plan.num_requests)
    if processes == 1:
        return asyncio.run(run_load_async(plan))
    return _run_in_processes([plan])[0]


def run_mix(loads: list[TenantLoad]) -> list[LoadReport]:
    """Every tenant's plan at once, each in its own processes, all started together."""
    return _run_in_processes([load.plan for load in loads])


async def run_load_async(
    plan: LoadPlan, offsets: list[float] | None = None, start_together: Barrier | None = None
) -> LoadReport:
    """Run the plan here (`offsets`: these arrivals instead of the plan's; `start_together`:
    a barrier to pass, with the processes running the other shares, before the first one)."""
    arrivals = plan.arrival_offsets() if offsets is None else offsets
    async with _session(plan) as session:
        model = plan.model or await _first_model(session)
        await _open_connections(session, min(plan.concurrency, len(arrivals)))
        if start_together is not None:
            start_together.wait(_START_TIMEOUT)
        slots = asyncio.Semaphore(plan.concurrency)
        started = time.perf_counter()

        async def one(offset: float) -> RequestRecord:
            await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
            async with slots:
                return await _stream_one(session, plan, model)

        records = await asyncio.gather(*(one(o) for o in arrivals))
        return LoadReport(model, time.perf_counter() - started, list(records))


# Seconds for the load processes to start (a fresh interpreter importing aiohttp) and meet.
_START_TIMEOUT = 120.0


def _session(plan: LoadPlan) -> aiohttp.ClientSession:
    base = plan.url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return aiohttp.ClientSession(
        base_url=base + "/",
        headers={"Authorization": f"Bearer {plan.api_key}"},
        timeout=aiohttp.ClientTimeout(total=plan.timeout),
        connector=aiohttp.TCPConnector(limit=plan.concurrency),
        read_bufsize=1 << 20,  # an SSE line (a chunk with logprobs) may be long
    )


async def _open_connections(session: aiohttp.ClientSession, count: int) -> None:
    """`count` connections in the session's keep-alive pool: as many requests at once."""

    async def touch() -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get("models") as response:
                await response.read()

    await asyncio.gather(*(touch() for _ in range(count)))


def _run_in_processes(plans: list[LoadPlan]) -> list[LoadReport]:
    """Each plan runs in `plan.processes` processes (at least one); each of its processes gets
    every `processes`-th arrival and its share of the concurrency. All processes pass one
    barrier together, so every duration runs from the same moment."""

    async def resolve_model(plan: LoadPlan) -> str:
        async with _session(plan) as session:
            return await _first_model(session)

    context = multiprocessing.get_context("spawn")
    shares: list[tuple[int, LoadPlan, list[float]]] = []
    models = []
    for index, plan in enumerate(plans):
        model = plan.model or asyncio.run(resolve_model(plan))
        models.append(model)
        offsets = plan.arrival_offsets()
        processes = max(1, min(plan.processes, plan.concurrency, plan.num_requests))
        for i in range(processes):
            share = dataclasses.replace(
                plan,
                model=model,
                concurrency=plan.concurrency // processes + (i < plan.concurrency % processes),
                num_requests=len(offsets[i::processes]),
                processes=1,
            )
            shares.append((index, share, offsets[i::processes]))
    barrier = context.Barrier(len(shares))
    results: multiprocessing.Queue[tuple[int, LoadReport] | str] = context.Queue()
    workers = []
    for number, (index, share, offsets) in enumerate(shares):
        worker = context.Process(
            target=_run_share,
            args=(index, share, offsets, barrier, results),
            name=f"ember-load-{number}",
            daemon=True,
        )
        worker.start()
        workers.append(worker)
    reports: list[list[LoadReport]] = [[] for _ in plans]
    try:
        for _ in shares:
            result = _next_result(results, workers)
            if isinstance(result, str):
                raise EmberError(f"a load-generating process failed: {result}")
            reports[result[0]].append(result[1])
    finally:
        for worker in workers:
            worker.join(5.0)
            if worker.is_alive():
                worker.kill()
    return [
        LoadReport(model, max(r.duration for r in parts), [x for r in parts for x in r.records])
        for model, parts in zip(models, reports, strict=True)
    ]


def _next_result(
    results: multiprocessing.Queue[tuple[int, LoadReport] | str],
    workers: Sequence[multiprocessing.process.BaseProcess],
) -> tuple[int, LoadReport] | str:
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise EmberError("a load-generating process died; see its output") from None


def _run_share(
    index: int,
    plan: LoadPlan,
    offsets: list[float],
    barrier: Barrier,
    results: multiprocessing.Queue[tuple[int, LoadReport] | str],
) -> None:
    try:
        results.put((index, asyncio.run(run_load_async(plan, offsets, barrier))))
    except Exception as error:  # reported to the parent, which raises it as an EmberError
        barrier.abort()
        results.put(f"{type(error).__name__}: {error}")


async def _first_model(session: aiohttp.ClientSession) -> str:
    try:
        async with session.get("models", raise_for_status=True) as response:
            listing = await response.json(content_type=None)
        return str(listing["data"][0]["id"])
    except (aiohttp.ClientError, TimeoutError, LookupError, TypeError, ValueError) as error:
        raise EmberError(f"could not list the server's models ({error}); pass --model") from None


def _body(plan: LoadPlan, model: str) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "max_tokens": plan.max_tokens,
        "temperature": plan.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if plan.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": plan.prompt}]
    else:
        body["prompt"] = plan.prompt
    if plan.ignore_eos:
        body["ignore_eos"] = True
    if plan.extra_body:
        body.update(plan.extra_body)
    return body


def read_extra_body(path: str) -> dict[str, object]:
    """A JSON object from a file, to merge into each request's body."""
    try:
        with open(path, "rb") as file:
            value = json.loads(file.read())
    except (OSError, ValueError) as error:
        raise EmberError(f"--extra-body {path}: {error}") from None
    if not isinstance(value, dict):
        raise EmberError(f"--extra-body {path}: the file must hold a JSON object")
    return value


async def _stream_one(session: aiohttp.ClientSession, plan: LoadPlan, model: str) -> RequestRecord:
    path = "chat/completions" if plan.endpoint == "chat" else "completions"
    sent = last = time.perf_counter()
    record = RequestRecord(sent=sent)
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with session.post(path, json=_body(plan, model)) as response:
            if response.status != 200:
                await response.read()
                record.outcome = str(response.status)
                return record
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    record.outcome = "stream error"
                    return record
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"]["completion_tokens"])
                if any(_has_content(choice) for choice in chunk.get("choices") or ()):
                    now = time.perf_counter()
                    if record.ttft is None:
                        record.ttft = now - sent
                    else:
                        record.itls.append(now - last)
                    last = now
                    chunks += 1
    except TimeoutError:
        record.outcome = "timeout"
        return record
    except (aiohttp.ClientError, ValueError):
        record.outcome = "connection error"
        return record
    record.output_tokens = usage_tokens if usage_tokens is not None else chunks
    record.latency = time.perf_counter() - sent
    return record


def _has_content(choice: dict[str, object]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content"))
    return bool(choice.get("text"))


def format_report(plan: LoadPlan, report: LoadReport) -> str:
    return "\n".join([*_plan_lines(plan, report), *_figure_lines(report)])


def format_mix_report(loads: list[TenantLoad], reports: list[LoadReport]) -> str:
    """The table per tenant with its share of the output tokens, then the aggregate."""
    sections = []
    for load, report, own in zip(loads, reports, _token_shares(reports), strict=True):
        share = "-" if own is None else f"{own:.1%}"
        sections.append(
            "\n".join(
                [
                    f"== tenant {load.label}",
                    *_plan_lines(load.plan, report),
                    *_figure_lines(report),
                    f"{'output token share':<22}{share}",
                ]
            )
        )
    aggregate = [f"== aggregate of {len(loads)} tenants", *_figure_lines(_aggregate(reports))]
    return "\n\n".join([*sections, "\n".join(aggregate)])


def report_figures(report: LoadReport) -> dict[str, object]:
    """The figures of `_figure_lines`, as numbers (None where there were none), for --json."""
    return {
        "duration_s": report.duration,
        "requests": len(report.records),
        "completed": len(report.completed),
        "requests_per_s": report.requests_per_second,
        "output_tokens": report.output_tokens,
        "output_tokens_per_s": report.output_tokens_per_second,
        "ttft_p50_s": report.ttft_percentile(50),
        "ttft_p99_s": report.ttft_percentile(99),
        "itl_p50_s": report.itl_percentile(50),
        "itl_p99_s": report.itl_percentile(99),
        "errors": dict(sorted(report.errors.items())),
    }


def mix_figures(loads: list[TenantLoad], reports: list[LoadReport]) -> dict[str, object]:
    """`format_mix_report`'s figures as numbers: each tenant's (with its share of the output
    tokens) under its label, and the aggregate's."""
    tenants = {}
    for load, report, share in zip(loads, reports, _token_shares(reports), strict=True):
        figures = report_figures(report)
        figures["output_token_share"] = share
        tenants[load.label] = figures
    return {"tenants": tenants, "aggregate": report_figures(_aggregate(reports))}


def _token_shares(reports: list[LoadReport]) -> list[float | None]:
    """Each report's share of all the output tokens (None where there were none)."""
    total = sum(report.output_tokens for report in reports)
    return [report.output_tokens / total if total else None for report in reports]


def _aggregate(reports: list[LoadReport]) -> LoadReport:
    return LoadReport(
        ", ".join(sorted({r.model for r in reports})),
        max(r.duration for r in reports),
        [record for report in reports for record in report.records],
    )


def _plan_lines(plan: LoadPlan, report: LoadReport) -> list[str]:
    arrivals = (
        "all at once" if plan.rate is None else f"{plan.arrivals} at {plan.rate:g} requests/s"
    )
    return [
        f"server {plan.url}  model {report.model}  endpoint {plan.endpoint}",
        f"requests {plan.num_requests} ({len(report.completed)} ok), concurrency "
        f"{plan.concurrency}, arrivals {arrivals}, max_tokens {plan.max_tokens}"
        + (", ignore_eos" if plan.ignore_eos else "")
        + (f", {plan.processes} processes" if plan.processes > 1 else ""),
    ]


def _figure_lines(report: LoadReport) -> list[str]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    errors = report.errors
    return [
        f"{'duration (s)':<22}{report.duration:.2f}",
        f"{'requests/s':<22}{report.requests_per_second:.2f}",
        f"{'output tok/s':<22}{report.output_tokens_per_second:.1f}",
        f"{'TTFT p50 / p99 (s)':<22}"
        f"{seconds(report.ttft_percentile(50))} / {seconds(report.ttft_percentile(99))}",
        f"{'ITL p50 / p99 (s)':<22}"
        f"{seconds(report.itl_percentile(50))} / {seconds(report.itl_percentile(99))}",
        f"{'errors':<22}"
        + (", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) if errors else "none"),
    ]
