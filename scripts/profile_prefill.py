"""Where a CUDA prefill's time goes: the wall time of one prompt to its first token, and (under
ncu) each kernel of exactly one such prefill.

    python scripts/profile_prefill.py --model synthetic:llama-8b-q4_0 --prompt-tokens 512
    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum \\
        --csv --print-units base python scripts/profile_prefill.py ... --ncu > k.csv
    python scripts/profile_decode.py --summarize k.csv

Prefill runs eagerly (no graph): the wall time includes the host's launches. With --ncu the
last prefill runs between cuProfilerStart/Stop, after the warm-up ones.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.gpu.driver import api, call


def _prefill_seconds(engine: LLMEngine, request_id: str, prompt: list[int]) -> float:
    engine.pool.reset_prefix_cache()
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.add_request(request_id, prompt, params)
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ncu", action="store_true")
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", show_progress=False))
    rng = np.random.default_rng(0)
    vocab = engine.model_config.vocab_size

    def prompt() -> list[int]:
        ids: list[int] = rng.integers(300, vocab, args.prompt_tokens).tolist()
        return ids

    walls = [_prefill_seconds(engine, f"prefill-{i}", prompt()) for i in range(args.runs)]
    best = min(walls[1:] or walls)
    print(
        f"prefill of {args.prompt_tokens} tokens: wall ms {[round(w * 1e3, 2) for w in walls]}, "
        f"best {best * 1e3:.2f} ({args.prompt_tokens / best:,.0f} tok/s)"
    )
    if args.ncu:
        call(api().cuProfilerStart)
        _prefill_seconds(engine, "prefill-ncu", prompt())
        call(api().cuProfilerStop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
