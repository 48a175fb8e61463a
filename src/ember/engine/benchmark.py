"""Engine throughput: prefill tokens/s and aggregate decode tokens/s at several batch sizes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class BenchResult:
    work: str
    batch: int
    tokens: int
    seconds: float
    # Per engine step: tokens it produced and its duration. The median step rate is robust to
    # the host stalling the whole VM now and then (seen on the 2-core CI machines: 0.3-0.7 s
    # pauses even in pure Python), which wall-clock throughput is not.
    step_tokens: tuple[int, ...] = ()
    step_seconds: tuple[float, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def median_step_tokens_per_second(self) -> float:
        if not self.step_seconds:
            return self.tokens_per_second
        rates = [n / s for n, s in zip(self.step_tokens, self.step_seconds, strict=True) if s > 0]
        return float(np.median(rates)) if rates else float("inf")


def _random_prompt(rng: np.random.Generator, engine: LLMEngine, length: int) -> list[int]:
    # Ordinary (non-special) vocabulary: ids above the first few hundred special/byte tokens.
    ids: list[int] = rng.integers(300, engine.model_config.vocab_size, size=length).tolist()
    return ids


def bench_prefill(engine: LLMEngine, prompt_tokens: int, rng: np.random.Generator) -> BenchResult:
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.add_request("bench-prefill", _random_prompt(rng, engine, prompt_tokens), params)
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    return BenchResult("prefill", 1, prompt_tokens, time.perf_counter() - started)


def bench_decode(
    engine: LLMEngine, batch: int, decode_tokens: int, prompt_tokens: int, rng: np.random.Generator
) -> BenchResult:
    """Aggregate decode rate: only steps where every sequence is decoding are timed."""
    params = SamplingParams(max_tokens=decode_tokens + 1, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"bench-decode-{i}", _random_prompt(rng, engine, prompt_tokens), params)
    started_ids: set[str] = set()
    while len(started_ids) < batch:  # prefill, possibly over several steps
        for out in engine.step():
            started_ids.add(out.request_id)
    step_tokens: list[int] = []
    step_seconds: list[float] = []
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        step_started = time.perf_counter()
        step_tokens.append(sum(len(out.new_token_ids) for out in engine.step()))
        step_seconds.append(time.perf_counter() - step_started)
    return BenchResult(
        "decode",
        batch,
        sum(step_tokens),
        time.perf_counter() - started,
        tuple(step_tokens),
        tuple(step_seconds),
    )


def run_benchmarks(
    engine: LLMEngine,
    batch_sizes: Iterable[int],
    decode_tokens: int,
    prompt_tokens: int,
    prefill_tokens: int,
    seed: int = 0,
) -> list[BenchResult]:
    rng = np.random.default_rng(seed)
    bench_prefill(engine, min(64, prefill_tokens), rng)  # warm-up: first-touch of KV pages
    engine.pool.reset_prefix_cache()
    results = [bench_prefill(engine, prefill_tokens, rng)]
    for batch in batch_sizes:
        engine.pool.reset_prefix_cache()
        results.append(bench_decode(engine, batch, decode_tokens, prompt_tokens, rng))
    return results


def memory_reference(seed: int = 0) -> float:
    """Median GB/s of a fixed float32 GEMV sweep over 64 MB: this machine's state, right now.

    Printed beside the engine's figures so that runs on noisy machines can be compared as ratios.
    """
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((576, 3584), dtype=np.float32) for _ in range(8)]
    x = rng.standard_normal((1, 576), dtype=np.float32)
    out = np.empty((1, 3584), np.float32)
    nbytes = sum(w.nbytes for w in weights)
    rates = []
    for _ in range(15):
        started = time.perf_counter()
        for w in weights:
            np.matmul(x, w, out=out)
        rates.append(nbytes / (time.perf_counter() - started) / 1e9)
    return float(np.median(rates))


def format_table(results: list[BenchResult]) -> str:
    header = f"{'work':<8} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>9}"
    lines = [f"{header} {'median-step tok/s':>18}"]
    for r in results:
        lines.append(
            f"{r.work:<8} {r.batch:>5} {r.tokens:>7} {r.seconds:>8.2f} "
            f"{r.tokens_per_second:>9.1f} {r.median_step_tokens_per_second:>18.1f}"
        )
    return "\n".join(lines)
