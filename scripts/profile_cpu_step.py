"""Where a NumPy (CPU) decode step's time goes, section by section.

    python scripts/profile_cpu_step.py [--batch 16] [--prompt-tokens 32] [--repeats 5]

It steps a real engine (default model, CPU) until `--batch` sequences decode, catches the
ForwardBatch of one decode step, and replays NumpyLlama.forward's sections on it with a timer
around each (the same functions, in the same order; the KV cache writes repeat the step's own),
then times the real forward and the whole engine step for comparison. Milliseconds per step,
the median of `--repeats` replays.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.model.forward_batch import ForwardBatch
from ember.model.numpy_llama import F32, NumpyLlama, c_ordered, linear, rms_norm, silu_mul


def _sections(model: NumpyLlama, batch: ForwardBatch) -> dict[str, float]:
    """Seconds per section of one forward pass over `batch`."""
    c, w = model.config, model.weights
    times: dict[str, float] = defaultdict(float)
    clock = [time.perf_counter()]

    def tick(name: str) -> None:
        now = time.perf_counter()
        times[name] += now - clock[0]
        clock[0] = now

    plan = model._plan_attention(batch)
    cos, sin = model.rope.cos_sin(batch.positions)
    slots = batch.slot_mapping.astype(np.int64)
    x = w.token_embd[batch.token_ids]
    tick("plan, embedding")
    for i, lw in enumerate(w.layers):
        h = rms_norm(x, lw.attn_norm, c.rms_eps)
        tick("rms_norm")
        qkv = linear(h, lw.wqkv)
        tick("qkv projection")
        qk = qkv[:, : c.q_dim + c.kv_dim].reshape(-1, c.n_heads + c.n_kv_heads, c.head_dim)
        qk = model.rope.apply(qk, cos, sin)
        v = qkv[:, c.q_dim + c.kv_dim :].reshape(-1, c.n_kv_heads, c.head_dim)
        tick("rope")
        model.k_cache[i, slots] = qk[:, c.n_heads :]
        model.v_cache[i, slots] = v
        tick("kv cache write")
        attn = model._attention(i, qk[:, : c.n_heads], plan)
        tick("attention")
        x = x + linear(attn.reshape(-1, c.q_dim), lw.wo)
        tick("output projection")
        h = rms_norm(x, lw.ffn_norm, c.rms_eps)
        tick("rms_norm")
        gate_up = linear(h, lw.w_gate_up)
        tick("gate/up projection")
        act = silu_mul(gate_up[:, : c.ffn_dim], gate_up[:, c.ffn_dim :])
        tick("silu * mul")
        x = x + linear(act, lw.w_down)
        tick("down projection")
    last = rms_norm(x[batch.logits_indices], w.output_norm, c.rms_eps)
    c_ordered(linear(last, w.lm_head))
    tick("lm head")
    return times


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


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
        engine.add_request(str(i), rng.integers(300, vocab, args.prompt_tokens).tolist(), params)
    started: set[str] = set()
    while len(started) < args.batch:
        started.update(out.request_id for out in engine.step())
    caught: list[ForwardBatch] = []
    forward = model.forward

    def catching(batch: ForwardBatch) -> F32:
        caught.append(batch)
        return forward(batch)

    model.forward = catching  # type: ignore[method-assign]
    engine.step()
    model.forward = forward  # type: ignore[method-assign]
    batch = caught[-1]
    _sections(model, batch)  # warm-up
    runs = [_sections(model, batch) for _ in range(args.repeats)]
    print(f"decode step of {args.batch} sequences, ms (median of {args.repeats}):")
    total = 0.0
    for name in sorted(runs[0], key=lambda n: -np.median([r[n] for r in runs])):
        ms = float(np.median([r[name] for r in runs])) * 1e3
        total += ms
        print(f"  {name:<20} {ms:7.2f}")
    print(f"  {'sum':<20} {total:7.2f}")
    print(f"forward               {_median_ms(lambda: forward(batch), args.repeats):7.2f}")
    print(f"engine step           {_median_ms(engine.step, args.repeats):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
