"""Where a CUDA decode step's time goes: engine step vs graph replay, and (under ncu) per kernel.

    python scripts/profile_decode.py --model /tmp/m/model.gguf --batch-sizes 1,64,256
    ncu --profile-from-start off --graph-profiling node --metrics gpu__time_duration.sum \
        --csv --print-units base python scripts/profile_decode.py --model ... --ncu > k.csv
    python scripts/profile_decode.py --summarize k.csv

Without --ncu it prints, per batch size, the wall time of one engine step (Python included)
and the device time of one replay of the step's CUDA graph (events around 200 replays). With
--ncu it replays each batch's graph once between cuProfilerStart/Stop, so ncu times each
kernel node of exactly one decode step.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict

import numpy as np

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.gpu.driver import api, call
from ember.gpu.graph import GraphExec
from ember.gpu.stream import Event
from ember.model.cuda.llama import CudaLlama, _bucket


def _decode_steady(engine: LLMEngine, batch: int, prompt_tokens: int) -> list[float]:
    rng = np.random.default_rng(batch)
    # Prefill takes batch * prompt_tokens / max_num_batched_tokens steps (32 at batch 256), in
    # which the sequences prefilled first already decode: none may finish before the timing.
    prefill_steps = -(-batch * prompt_tokens // engine.config.max_num_batched_tokens)
    params = SamplingParams(max_tokens=prefill_steps + 32, temperature=0.0, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for i in range(batch):
        engine.add_request(i, rng.integers(300, vocab, prompt_tokens).tolist(), params)
    # Only decode steps are timed: step until every sequence has its first token.
    first_tokens: set[int] = set()
    while len(first_tokens) < batch:
        first_tokens.update(out.request_id for out in engine.step())
    for _ in range(4):
        engine.step()
    times = []
    for _ in range(16):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times


def _finish(engine: LLMEngine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--ncu", action="store_true")
    parser.add_argument("--summarize")
    parser.add_argument(
        "--compare-fused",
        action="store_true",
        help="also replay each step with the separate kernels (CudaLlama.fused_decode off)",
    )
    args = parser.parse_args()
    if args.summarize:
        return _summarize(args.summarize)
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", show_progress=False))
    model = engine.model.backend
    assert isinstance(model, CudaLlama)
    extra = f" {'separate ms':>12}" if args.compare_fused else ""
    print(
        f"{'batch':>5} {'engine step ms':>15} {'graph replay ms':>16} {'tok/s (graph)':>14}{extra}"
    )
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        step_times = _decode_steady(engine, batch, args.prompt_tokens)
        # The last step's inputs are still on the device: replaying its graph redoes that step.
        tokens_b = _bucket(model._token_buckets, batch)
        key = (tokens_b, min(_bucket(model._row_buckets, batch), tokens_b))
        graph = model._graph(*key)
        if args.ncu:
            call(api().cuProfilerStart)
            graph.launch(model.stream)
            model.stream.synchronize()
            call(api().cuProfilerStop)
            _finish(engine)
            continue
        replay = _replay_ms(model, graph)
        separate = ""
        if args.compare_fused:
            model.fused_decode = False
            separate = f" {_replay_ms(model, model._graph(*key)):>12.3f}"
            model.fused_decode = True
        step = float(np.median(step_times)) * 1e3
        print(
            f"{batch:>5} {step:>15.3f} {replay:>16.3f} {batch / replay * 1e3:>14.0f}"
            f"{separate}  {key}"
        )
        _finish(engine)
    return 0


def _replay_ms(model: CudaLlama, graph: GraphExec) -> float:
    """Device ms of one replay of `graph` (events around 200 replays after 10 warm-up ones)."""
    start, end = Event.create(), Event.create()
    for _ in range(10):
        graph.launch(model.stream)
    start.record(model.stream)
    for _ in range(200):
        graph.launch(model.stream)
    end.record(model.stream)
    end.synchronize()
    return start.elapsed_ms(end) / 200


def _summarize(path: str) -> int:
    totals: dict[str, list[float]] = defaultdict(list)
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0]
        value = float(row["Metric Value"].replace(",", ""))
        totals[f"{name} {row.get('Grid Size', '')}"].append(value)
    grand = sum(sum(v) for v in totals.values())
    print(f"{'kernel':<60} {'count':>5} {'total us':>9} {'mean us':>8} {'share':>6}")
    for name, values in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        total = sum(values) / 1e3
        mean = total / len(values)
        share = 100 * total / (grand / 1e3)
        print(f"{name[:60]:<60} {len(values):>5} {total:>9.1f} {mean:>8.2f} {share:>5.1f}%")
    print(f"all kernels: {grand / 1e3:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
