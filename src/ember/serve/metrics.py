"""Prometheus metrics, under vLLM's names where vLLM has one so its dashboards work unchanged.

Each server owns its registry (no process-global state). Label children are resolved once
here: the per-token path only calls `observe`/`inc` on prebuilt objects.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from ember.engine.engine_stats import EngineStats
from ember.engine.sequence import FinishReason

if TYPE_CHECKING:
    from ember.queue.job_store import QueueDepth


def _buckets(bounds: str) -> tuple[float, ...]:
    return tuple(float(bound) for bound in bounds.split())


# vLLM's buckets (vllm/v1/metrics/loggers.py), so histograms line up across servers.
_TTFT_BUCKETS = _buckets(
    "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 20 40 80 160 640 2560"
)
_ITL_BUCKETS = _buckets(
    "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 5 7.5 10 20 40 80"
)
_REQUEST_LATENCY_BUCKETS = _buckets(
    "0.3 0.5 0.8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680"
)
_ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _one_two_five(limit: int) -> list[float]:
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > limit:
                return buckets
            buckets.append(float(mantissa * scale))
        scale *= 10


class TokenHistogram:
    """A histogram observed on every generated token (the inter-token latency: once per
    output a choice receives, which holds several tokens where a grammar forced them), so
    observing costs one bisect.

    prometheus_client's `Histogram.observe` takes a lock per bucket it walks and checks its
    labels on every call, several microseconds: at GPU rates (40,000 tokens/s) that was a
    tenth of the server's core. The event loop is this object's only user, so plain counts do.
    It exposes the same samples (`_bucket` with `le`, `_count`, `_sum`), without `_created`.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: dict[str, str],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._bounds = buckets
        # As prometheus_client writes them (repr of the float: "0.01", "1.0"), and "+Inf".
        self._le = [repr(float(bound)) for bound in buckets] + ["+Inf"]
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf only)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, Prometheus' `le` (value <= bound) bucket.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=list(self._labels))
        cumulative, buckets = 0, []
        for le, count in zip(self._le, self._counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(list(self._labels.values()), buckets, self._sum)
        yield family


# How a request to the API ended, for `ember:tenant_requests_total`: "shed" is a 503 given to a
# waiting request of a sheddable class to make room for a more urgent one.
OUTCOMES = ("served", "401", "404", "429", "503", "shed", "other")


@dataclass(frozen=True, slots=True)
class TenantSeries:
    """One tenant and class's series, resolved once per tenant (not per request)."""

    queue_time: Histogram
    ttft: Histogram
    e2e: Histogram
    prompt_tokens: Counter
    generation_tokens: Counter


class TenantMetrics:
    """Series per tenant and class. Their labels come from the tenants file only (plus
    `anonymous`, `default`, and "" for callers with no valid key), so their number is bounded
    by the file's tenants, however many keys or callers there are."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("tenant", "class")
        r = registry
        self._requests = Counter(
            "ember:tenant_requests",
            "API requests by tenant, class and outcome (served, 401, 404, 429, 503, shed, other).",
            (*labels, "outcome"),
            registry=r,
        )
        self._queue_time = Histogram(
            "ember:tenant_queue_time_seconds",
            "Arrival until the engine first schedules a sequence, by tenant and class.",
            labels,
            buckets=_REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            "ember:tenant_time_to_first_token_seconds",
            "Time to first token, by tenant and class.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._e2e = Histogram(
            "ember:tenant_e2e_request_latency_seconds",
            "Arrival to last token, per sequence, by tenant and class.",
            labels,
            buckets=_REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self._prompt = Counter(
            "ember:tenant_prompt_tokens", "Prompt tokens of started sequences.", labels, registry=r
        )
        self._generation = Counter(
            "ember:tenant_generation_tokens", "Generated tokens.", labels, registry=r
        )
        self._series: dict[tuple[str, str], TenantSeries] = {}
        self._outcomes: dict[tuple[str, str, str], Counter] = {}

    def series(self, tenant: str, service_class: str) -> TenantSeries:
        key = (tenant, service_class)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = TenantSeries(
                self._queue_time.labels(*key),
                self._ttft.labels(*key),
                self._e2e.labels(*key),
                self._prompt.labels(*key),
                self._generation.labels(*key),
            )
        return found

    def on_outcome(self, tenant: str, service_class: str, outcome: str) -> None:
        key = (tenant, service_class, outcome)
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = self._requests.labels(*key)
        child.inc()


class QueueMetrics:
    """The job queue's state, read from JetStream at each scrape (`QueueDepth`).

    `ember:queue_depth` is the figure KEDA's NATS JetStream scaler reads for the workers'
    consumer: jobs waiting plus jobs delivered and not yet acknowledged."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.depth = Gauge(
            "ember:queue_depth",
            "Jobs queued or running: pending plus unacknowledged on the workers' consumer.",
            registry=r,
        )
        self.pending = Gauge("ember:queue_pending_jobs", "Jobs no worker has taken.", registry=r)
        self.unacked = Gauge(
            "ember:queue_unacked_jobs", "Jobs delivered to a worker, not yet acknowledged.",
            registry=r,
        )  # fmt: skip
        self.oldest_age = Gauge(
            "ember:queue_oldest_job_age_seconds",
            "Age of the oldest job still in the stream (0 when empty).",
            registry=r,
        )
        self.redeliveries = Gauge(
            "ember:queue_redelivered_jobs",
            "Jobs delivered more than once so far (a worker died or naked them).",
            registry=r,
        )
        self.dead_letters = Gauge(
            "ember:queue_dead_letter_jobs",
            "Jobs failed after max_deliver attempts.",
            registry=r,
        )
        self.reachable = Gauge(
            "ember:queue_reachable", "1 while the job queue answers, else 0.", registry=r
        )

    def update(self, depth: QueueDepth) -> None:
        self.depth.set(depth.total)
        self.pending.set(depth.pending)
        self.unacked.set(depth.unacknowledged)
        self.oldest_age.set(depth.oldest_age_seconds)
        self.redeliveries.set(depth.redeliveries)
        self.dead_letters.set(depth.dead_letters)
        self.reachable.set(1)

    def on_unreachable(self) -> None:
        self.reachable.set(0)


# What a worker has counted before its first report.
_NOTHING_COUNTED: Final = EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0)


class ServerMetrics:
    def __init__(self, model_name: str, context_length: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ("model_name", "engine")
        values = (model_name, "0")

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Sequences in the engine's batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Sequences waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in prompt tokens looked up."
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in prompt tokens served from cache."
        )
        self.preemptions = counter("vllm:num_preemptions", "Sequences preempted by the engine.")
        self.urgent_steps = counter(
            "ember:urgent_steps", "Engine steps given to a more urgent class's arrival alone."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of started sequences.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Tokens per engine step.", _ITERATION_TOKEN_BUCKETS
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS
        )
        self.itl = TokenHistogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens.",
            dict(zip(labels, values, strict=True)),
            _ITL_BUCKETS,
            r,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token, per sequence.",
            _REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time spent waiting before first scheduled.",
            _REQUEST_LATENCY_BUCKETS,
        )
        token_buckets = _one_two_five(context_length)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per sequence.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Generated tokens per sequence.", token_buckets
        )
        success = Counter(
            "vllm:request_success",
            "Finished sequences by finish reason.",
            (*labels, "finished_reason"),
            registry=r,
        )
        self.finished = {reason: success.labels(*values, reason.value) for reason in FinishReason}
        self.worker_restarts = counter(
            "ember:worker_restarts", "Engine worker processes restarted after dying."
        )
        self.worker_ready = gauge("ember:worker_ready", "1 while an engine worker is ready.")
        self.batch_size = histogram(
            "ember:batch_size", "Sequences per engine step.", _BATCH_SIZE_BUCKETS
        )
        self._http = Counter(
            "ember:http_requests",
            "HTTP responses by endpoint and status code.",
            ("endpoint", "status"),
            registry=r,
        )
        self._http_children: dict[tuple[str, int], Counter] = {}
        self.tenants = TenantMetrics(r)
        self._last_stats: EngineStats | None = None

    def on_engine_step(self, stats: EngineStats) -> None:
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_usage)
        # The engine's totals since it started; each counter takes what it grew by since the
        # previous report (a new worker's first report: all of it).
        before = self._last_stats or _NOTHING_COUNTED
        self.prefix_queries.inc(max(0, stats.prefix_cache_queries - before.prefix_cache_queries))
        self.prefix_hits.inc(max(0, stats.prefix_cache_hits - before.prefix_cache_hits))
        self.preemptions.inc(max(0, stats.num_preemptions - before.num_preemptions))
        self.urgent_steps.inc(max(0, stats.num_urgent_steps - before.num_urgent_steps))
        self._last_stats = stats
        if stats.last_batch_size:
            self.batch_size.observe(stats.last_batch_size)
            self.iteration_tokens.observe(stats.last_batch_tokens)

    def on_worker_ready(self) -> None:
        """A new worker starts its counters at zero."""
        self._last_stats = None
        self.worker_ready.set(1)

    def on_worker_lost(self) -> None:
        self.worker_ready.set(0)
        self.running.set(0)
        self.waiting.set(0)
        self.kv_usage.set(0)

    def on_http_response(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self._http.labels(endpoint, str(status))
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
