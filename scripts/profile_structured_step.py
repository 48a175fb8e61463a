"""Where a step's time goes with constrained sequences: the engine alone (no server), N free
sequences, then N constrained by the benchmark's JSON schema, then N/8 of those beside 7N/8
free ones (issue 17's mix: what a free stream loses), timing the token masks' fill and the
step's phases on the host.

    python scripts/profile_structured_step.py [--model M] [--device cuda] [--seqs 64]
        [--mask-workers N] [--no-ask] [--engine-headroom N] [--sync] [--no-jump-forward]
        [--profile]

With no model given it runs the default model's shape with random weights
(`synthetic:smollm2-135m-q4_1`): the tokens are meaningless but the masks are real."""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import time
from pathlib import Path

import ember.engine.mask_workers as mask_workers_module
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.mask_workers import MaskWorkers
from ember.engine.sampling_params import SamplingParams
from ember.engine.structured_output import StructuredOutput

SCHEMA_BODY = Path(__file__).parent / "bench_data" / "json_schema_body.json"


class Timed:
    """Seconds spent in one method of an object, by wrapping it."""

    def __init__(self, owner: object, name: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        inner = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        setattr(owner, name, timed)


def run(
    engine: LLMEngine, params: list[SamplingParams], prompt: list[int], counted: int | None = None
) -> tuple[int, float]:
    """The tokens of the first `counted` requests (all: None) and the seconds until the last of
    them finished."""
    counted = len(params) if counted is None else counted
    for i, p in enumerate(params):
        engine.add_request(i, prompt, p)
    tokens, left, seconds = 0, counted, 0.0
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id < counted:
                tokens += len(output.new_token_ids)
                if output.finished:
                    left -= 1
                    if not left:
                        seconds = time.perf_counter() - started
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="synthetic:smollm2-135m-q4_1")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument(
        "--sync",
        action="store_true",
        help="no overlapping steps (EngineConfig.async_scheduling off): each step's masks, and "
        "its host work, between the device's steps",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the constrained run (top 30 by own time)"
    )
    parser.add_argument(
        "--no-jump-forward",
        action="store_true",
        help="sample every token, forced ones too (EngineConfig.jump_forward off)",
    )
    parser.add_argument(
        "--mask-workers",
        type=int,
        default=None,
        help="mask worker processes (default: the engine's; 0: masks on the engine's threads)",
    )
    parser.add_argument(
        "--no-ask",
        action="store_true",
        help="mask workers get a sequence's token only when its next masks are filled, not "
        "when the token is collected (`MaskWorkers.ask` off: the tree before it, to compare)",
    )
    parser.add_argument(
        "--engine-headroom",
        type=int,
        default=None,
        help="sequences each worker holds beyond the engine's thread before that thread takes "
        "a share (default: `mask_workers._ENGINE_HEADROOM`; 0: an even share, as before)",
    )
    args = parser.parse_args()
    if args.no_ask:
        MaskWorkers.ask = lambda self, tokens: None  # type: ignore[method-assign]
    if args.engine_headroom is not None:
        mask_workers_module._ENGINE_HEADROOM = args.engine_headroom
    schema = json.loads(SCHEMA_BODY.read_text())["response_format"]["json_schema"]["schema"]
    spec = StructuredOutput.json_schema(schema)
    config = EngineConfig(
        model=args.model,
        device=args.device,
        max_num_seqs=args.seqs,
        show_progress=False,
        mask_workers=args.mask_workers,
        async_scheduling=not args.sync,
        jump_forward=not args.no_jump_forward,
    )
    engine = LLMEngine(config)
    prompt = engine.tokenizer.encode("List six things in a shed as JSON.", add_special_tokens=True)
    workers = engine.mask_workers
    fill = Timed(engine.grammars, "fill_masks") if workers is None else Timed(workers, "fill")
    # Where a step's host time goes (nested: collect holds the wait for the device's tokens,
    # sample_constrained holds the fill).
    phases = {
        "step": Timed(engine, "step"),
        "collect": Timed(engine, "_collect"),
        "wait tokens": Timed(engine.runner, "collect"),
        "sample_constrained": Timed(engine.runner, "sample_constrained"),
        "launch": Timed(engine.runner, "launch"),
    }
    free = [
        SamplingParams(max_tokens=args.tokens, temperature=0.8, seed=i, ignore_eos=True)
        for i in range(args.seqs)
    ]
    constrained = [
        SamplingParams(max_tokens=256, temperature=0.8, seed=i, structured=spec)
        for i in range(args.seqs)
    ]
    run(engine, constrained[:4], prompt)  # the grammar's compile
    if workers is not None and not workers.wait_ready(60):
        raise SystemExit("the mask workers did not start within 60 s")
    # Warm-up at the runs' own sizes: a CUDA graph is captured the first time a step of its
    # (tokens, rows) bucket runs, tens of milliseconds each, and a constrained batch with forced
    # tokens meets buckets a free one never does (about twenty); captured inside a timed run,
    # they would count as its steps' time.
    run(engine, [dataclasses.replace(p, max_tokens=16) for p in free], prompt)
    run(engine, [dataclasses.replace(p, max_tokens=96) for p in constrained], prompt)
    print(f"mask workers: {0 if workers is None else workers.num_ready}")
    rows = []
    few = args.seqs // 8  # the benchmark's mix: 56 free streams and 8 constrained of 64
    runs = [
        ("free", free, None),
        ("constrained", constrained, None),
        (
            f"free beside {few} constrained",
            free[: args.seqs - few] + constrained[:few],
            args.seqs - few,
        ),
    ]
    for label, params, counted in runs:
        fill.seconds, fill.calls = 0.0, 0
        for timed in phases.values():
            timed.seconds, timed.calls = 0.0, 0
        profiler = cProfile.Profile() if args.profile and label == "constrained" else None
        if profiler is not None:
            profiler.enable()
        tokens, seconds = run(engine, params, prompt, counted)
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        per_fill = fill.seconds / max(fill.calls, 1) * 1e3
        rows.append((label, tokens, tokens / seconds, fill.calls, per_fill))
        steps = max(phases["step"].calls, 1)
        print(
            f"{label}: {steps} steps; per step, ms: "
            + ", ".join(f"{name} {t.seconds / steps * 1e3:.2f}" for name, t in phases.items())
        )
    print(f"{'run':<28} {'tokens':>7} {'tok/s':>9} {'mask fills':>10} {'ms/fill':>8}")
    for label, tokens, rate, calls, per_fill in rows:
        print(f"{label:<28} {tokens:>7} {rate:>9.0f} {calls:>10} {per_fill:>8.2f}")
    free_rate, mixed_rate = rows[0][2] / args.seqs, rows[2][2] / (args.seqs - few)
    print(f"a free stream beside constrained ones: {mixed_rate / free_rate - 1:+.1%} tok/s")
    engine.close()


if __name__ == "__main__":
    main()
