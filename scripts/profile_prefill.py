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

import numpy as np

from ember.bench.engine_throughput import bench_prefill
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.gpu.driver import api, call


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ncu", action="store_true")
    parser.add_argument(
        "--mmq",
        action="store_true",
        help="K-quant products of many rows on the int8 tensor-core GEMM (CudaLlama.use_mmq)",
    )
    parser.add_argument(
        "--attention-rows",
        action="store_true",
        help="prefill's attention on the rows kernels (CudaLlama.attention_rows)",
    )
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", show_progress=False))
    if args.mmq:
        engine.runner.backend.use_mmq = True  # type: ignore[attr-defined]
    if args.attention_rows:
        engine.runner.backend.attention_rows = True  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    walls = [bench_prefill(engine, args.prompt_tokens, rng).seconds for _ in range(args.runs)]
    best = min(walls[1:] or walls)
    print(
        f"prefill of {args.prompt_tokens} tokens: wall ms {[round(w * 1e3, 2) for w in walls]}, "
        f"best {best * 1e3:.2f} ({args.prompt_tokens / best:,.0f} tok/s)"
    )
    if args.ncu:
        call(api().cuProfilerStart)
        bench_prefill(engine, args.prompt_tokens, rng)
        call(api().cuProfilerStop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
