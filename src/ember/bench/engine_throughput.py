"""Engine throughput: prefill tokens/s and aggregate decode tokens/s at several batch sizes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.errors import EmberError


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


def bench_prefill(
    engine: LLMEngine, prompt_tokens: int, rng: np.random.Generator, repeats: int = 1
) -> BenchResult:
    """One prompt of `prompt_tokens` to its first token; the median of `repeats` runs."""
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    times = []
    for i in range(repeats):
        engine.pool.reset_prefix_cache()
        prompt = _random_prompt(rng, engine, prompt_tokens)
        engine.add_request(i, prompt, params)
        started = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        times.append(time.perf_counter() - started)
    return BenchResult("prefill", 1, prompt_tokens, float(np.median(times)))


def bench_decode(
    engine: LLMEngine, batch: int, decode_tokens: int, prompt_tokens: int, rng: np.random.Generator
) -> BenchResult:
    """Aggregate decode rate at `batch` sequences: `decode_tokens` steps timed, each one where
    every sequence decodes (llama-batched-bench's S_TG measures the same).

    The prompts are prefilled over several steps, in which the sequences started first already
    decode; none of them may finish before the timed steps end, or the last steps would run
    fewer sequences than `batch`. So every request may generate more than is timed, and what is
    left of them is aborted after the timed steps (freeing their KV blocks).
    """
    budget = engine.config.max_num_batched_tokens
    prefill_steps = -(-batch * prompt_tokens // budget) + 1
    # Tokens before the timed steps: up to one per prefill step, one from the warm-up step.
    params = SamplingParams(
        max_tokens=prefill_steps + 1 + decode_tokens + 1, temperature=0.0, ignore_eos=True
    )
    request_ids = list(range(batch))
    for request_id in request_ids:
        engine.add_request(request_id, _random_prompt(rng, engine, prompt_tokens), params)
    started_ids: set[int] = set()
    while len(started_ids) < batch:  # prefill, possibly over several steps
        for out in engine.step():
            started_ids.add(out.request_id)
    # One untimed decode step: a backend's first step of a new size may set it up (a CUDA
    # graph capture), which is start-up cost, not decode rate.
    engine.step()
    step_tokens: list[int] = []
    step_seconds: list[float] = []
    started = time.perf_counter()
    for _ in range(decode_tokens):
        step_started = time.perf_counter()
        step_tokens.append(sum(len(out.new_token_ids) for out in engine.step()))
        step_seconds.append(time.perf_counter() - step_started)
    seconds = time.perf_counter() - started
    for request_id in request_ids:
        engine.abort(request_id)
    return BenchResult(
        "decode", batch, sum(step_tokens), seconds, tuple(step_tokens), tuple(step_seconds)
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
    # Warm-up at the measured size: first touch of KV pages, and on a GPU the step's graph.
    bench_prefill(engine, prefill_tokens, rng)
    results = [bench_prefill(engine, prefill_tokens, rng, repeats=3)]
    for batch in batch_sizes:
        engine.pool.reset_prefix_cache()
        results.append(bench_decode(engine, batch, decode_tokens, prompt_tokens, rng))
    return results


def cold_start_seconds(model: str | None, device: str) -> float:
    """Wall time from starting a fresh `ember run` process to its first generated byte."""
    command = [sys.executable, "-m", "ember", "run", "--device", device, "--max-tokens", "2"]
    command += ["--temperature", "0", "Hello"]
    if model is not None:
        command += ["--model", model]
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None
        first = child.stdout.read(1)
        elapsed = time.perf_counter() - started
        _, errors = child.communicate()
    if child.returncode != 0 or not first:
        raise EmberError(f"cold-start run failed: {errors.decode(errors='replace')[-500:]}")
    return elapsed


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


@dataclass(frozen=True, slots=True)
class HostCpuTimes:
    """The machine's CPU time so far by kind, in ticks (Linux /proc/stat, all CPUs)."""

    total: int
    steal: int  # time a hypervisor ran something else while this VM wanted its CPUs

    @classmethod
    def read(cls) -> HostCpuTimes | None:
        """None where there is no /proc/stat (not Linux)."""
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return cls(total=sum(fields), steal=fields[7] if len(fields) > 7 else 0)

    def steal_share_since(self, earlier: HostCpuTimes) -> float:
        """The share of the machine's CPU time stolen between `earlier` and this reading."""
        total = self.total - earlier.total
        return (self.steal - earlier.steal) / total if total > 0 else 0.0


def format_table(results: list[BenchResult]) -> str:
    header = f"{'work':<8} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>9}"
    lines = [f"{header} {'median-step tok/s':>18}"]
    for r in results:
        lines.append(
            f"{r.work:<8} {r.batch:>5} {r.tokens:>7} {r.seconds:>8.2f} "
            f"{r.tokens_per_second:>9.1f} {r.median_step_tokens_per_second:>18.1f}"
        )
    return "\n".join(lines)
