"""Where a NumPy (CPU) decode step's time goes, section by section.

    python scripts/profile_cpu_step.py [--batch 16] [--prompt-tokens 32] [--repeats 5]

It steps a real engine (default model, CPU) until `--batch` sequences decode, catches the
ForwardBatch of one decode step, and replays NumpyLlama.forward on it with a timer around each
of the functions it calls (projections told apart by their weight; "other" is the rest of the
forward: the KV cache writes, residual adds, slicing), then times the whole engine step for
comparison. Milliseconds per step, the median of `--repeats` replays.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.model import numpy_llama
from ember.model.forward_batch import ForwardBatch
from ember.model.numpy_llama import F32, NumpyLlama


def _timed(times: dict[str, float], name: Callable[..., str], fn: Callable[..., Any]) -> Any:
    """`fn` adding its duration to times[name(*args)]."""

    def wrapper(*args: Any) -> Any:
        started = time.perf_counter()
        result = fn(*args)
        times[name(*args)] += time.perf_counter() - started
        return result

    return wrapper


def _instrument(model: NumpyLlama, times: dict[str, float]) -> None:
    """Timers around what NumpyLlama.forward calls (for the rest of the process)."""
    w = model.weights
    projections = {id(w.lm_head): "lm head"}
    for lw in w.layers:
        projections[id(lw.wqkv)] = "qkv projection"
        projections[id(lw.wo)] = "output projection"
        projections[id(lw.w_gate_up)] = "gate/up projection"
        projections[id(lw.w_down)] = "down projection"
    m = numpy_llama
    m.linear = _timed(times, lambda x, w: projections[id(w)], m.linear)  # type: ignore[assignment]
    m.rms_norm = _timed(times, lambda *_: "rms_norm", m.rms_norm)  # type: ignore[assignment]
    m.silu_mul = _timed(times, lambda *_: "silu * mul", m.silu_mul)  # type: ignore[assignment]
    m.c_ordered = _timed(times, lambda *_: "lm head", m.c_ordered)  # type: ignore[assignment]
    model.rope.apply = _timed(times, lambda *_: "rope", model.rope.apply)  # type: ignore[method-assign]
    for method, label in (("_attention", "attention"), ("_plan_attention", "attention plan")):
        setattr(model, method, _timed(times, lambda *_, s=label: s, getattr(model, method)))


def _catch_decode_batch(engine: LLMEngine, model: NumpyLlama) -> ForwardBatch:
    """The ForwardBatch of the engine's next step."""
    caught: list[ForwardBatch] = []
    forward = model.forward

    def catching(batch: ForwardBatch) -> F32:
        caught.append(batch)
        return forward(batch)

    model.forward = catching  # type: ignore[method-assign]
    engine.step()
    model.forward = forward  # type: ignore[method-assign]
    return caught[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(show_progress=False))
    model = engine.model.backend
    assert isinstance(model, NumpyLlama)
    rng = np.random.default_rng(0)
    steps = 2 * args.repeats + 8
    params = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for i in range(args.batch):
        engine.add_request(i, rng.integers(300, vocab, args.prompt_tokens).tolist(), params)
    started: set[int] = set()
    while len(started) < args.batch:
        started.update(out.request_id for out in engine.step())
    batch = _catch_decode_batch(engine, model)

    step_ms = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        engine.step()
        step_ms.append((time.perf_counter() - t) * 1e3)

    times: dict[str, float] = defaultdict(float)
    _instrument(model, times)
    model.forward(batch)  # warm-up
    runs = []
    for _ in range(args.repeats):
        times.clear()
        t = time.perf_counter()
        model.forward(batch)
        runs.append({**times, "forward": time.perf_counter() - t})
    ms = {name: float(np.median([r[name] for r in runs])) * 1e3 for name in runs[0]}
    forward_ms = ms.pop("forward")
    ms["other"] = forward_ms - sum(ms.values())
    print(f"decode step of {args.batch} sequences, ms (median of {args.repeats}):")
    for name, value in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {value:7.2f}")
    print(f"forward               {forward_ms:7.2f}")
    print(f"engine step           {float(np.median(step_ms)):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
