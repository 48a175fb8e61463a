"""What one step's token masks cost: N sequences under the structured-output benchmark's JSON
schema, each at its own point of a valid document and taking its next token every step, as in
decoding. Their masks are filled

- by `GrammarCompiler.fill_masks` with 1, 2, 4, ... threads, the sequences copied from one
  compile (one lexer, whose lock serialises their masks) or from one compile per thread;
- by `MaskWorkers` (the engine's default on more than one CPU) with 1, 2, 4, 8 worker
  processes beside the calling thread, which computes its share too.

    python scripts/bench_mask_fill.py [--model M] [--seqs 64] [--steps 40] [--no-threads]
                                      [--callback-tokenizer]

llguidance encodes the grammar's forced bytes with its own Rust copy of the tokenizer where that
is exact (`engine/grammar_tokenizer.py`; the first line says which); `--callback-tokenizer`
times the threads with the Python callback instead, as before that copy (the worker processes
always build their own, so it runs no workers).

Prints the median milliseconds per step (the fill only: the matchers' `consume_token` is the
engine's either way) and microseconds per mask, after a few steps of warm-up; with threads also
the process's CPU milliseconds per step (all its threads: on a shared machine steadier than the
wall clock); with workers the round trip of an empty request (the IPC cost a step pays).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from llguidance import LLExecutor, LLMatcher

from ember.engine.grammar import GrammarCompiler, mask_threads
from ember.engine.grammar_tokenizer import callback_lltokenizer
from ember.engine.mask_workers import MaskWorkers, mask_worker_count
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence
from ember.engine.structured_output import StructuredOutput
from ember.model.default_model import resolve_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.tokenizer import Tokenizer

SCHEMA_BODY = Path(__file__).parent / "bench_data" / "json_schema_body.json"
NAMES = ("hammer", "rake", "garden hose", "old bicycle", "paint can", "ladder")
KINDS = ("tool", "food", "book", "toy")
# A worker compiles its mirrors' spec at its first rows (the engine's thread computes them
# meanwhile), and every lexer learns its first states: steps before this are not timed.
WARM_UP_STEPS = 10


def document(number: int) -> str:
    """A valid answer to the benchmark's schema, different for each number."""
    items = [
        {
            "name": f"{name} {number}",
            "count": (number * 37 + i * 11) % 9999,
            "kind": KINDS[(number + i) % 4],
            "fragile": (number + i) % 2 == 0,
        }
        for i, name in enumerate(NAMES)
    ]
    return json.dumps({"items": items})


def sequences(
    grammars: GrammarCompiler, tokenizer: Tokenizer, spec: StructuredOutput, n: int, steps: int
) -> tuple[list[Sequence], list[list[int]]]:
    """n sequences, each somewhere in its own document with `steps` tokens of it still to go
    (their matchers at that point), and those tokens."""
    seqs, ahead = [], []
    params = SamplingParams(structured=spec)
    for number in range(n):
        ids = tokenizer.encode(document(number), add_special_tokens=False)
        position = (number * 7919) % (len(ids) - steps)
        matcher: LLMatcher = grammars.matcher(spec)
        assert matcher.consume_tokens(ids[:position]), (number, position)
        seq = Sequence(number, number, ids[:position], 0, params, np.random.default_rng(0), 0.0)
        seq.grammar = matcher
        seqs.append(seq)
        ahead.append(ids[position : position + steps])
    return seqs, ahead


def advance(seqs: list[Sequence], ahead: list[list[int]], step: int) -> None:
    for seq, tokens in zip(seqs, ahead, strict=True):
        assert seq.grammar is not None and seq.grammar.consume_token(tokens[step])
        seq.token_ids.append(tokens[step])


def stepped(
    seqs: list[Sequence], ahead: list[list[int]], fill: object, steps: int
) -> tuple[float, float]:
    """Median seconds of `fill(seqs, masks)` over the steps after the warm-up: wall clock, and
    this process's CPU time."""
    seconds, cpu = [], []
    for step in range(steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        fill(seqs)  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        advance(seqs, ahead, step)
    return float(np.median(seconds[WARM_UP_STEPS:])), float(np.median(cpu[WARM_UP_STEPS:]))


def wait_groups(grammars: GrammarCompiler, spec: StructuredOutput, groups: int) -> None:
    grammars.matcher(spec)
    while len(grammars._compiled[spec].templates) < groups:
        grammars.matcher(spec)  # the groups compile on the compiler's thread
        time.sleep(0.005)


def threads_rows(
    tokenizer: Tokenizer, spec: StructuredOutput, n: int, steps: int, callback: bool
) -> None:
    print(f"{'threads':>7} {'lexer groups':>12} {'ms/step':>8} {'us/mask':>8} {'CPU ms':>7}")
    lltokenizer = callback_lltokenizer(tokenizer) if callback else None
    most = max(mask_threads(), 1)
    for threads in sorted({1, 2, most, *(t for t in (4, 8, 16, 32) if t < most)}):
        for groups in sorted({1, threads}):
            grammars = GrammarCompiler(tokenizer, lexer_groups=groups)
            if lltokenizer is not None:
                grammars._lltokenizer = lltokenizer
            grammars._executor = LLExecutor(threads)  # the thread count under test
            wait_groups(grammars, spec, groups)
            seqs, ahead = sequences(grammars, tokenizer, spec, n, steps)
            masks = np.zeros((n, grammars.mask_words), np.int32)

            def fill(
                s: list[Sequence], g: GrammarCompiler = grammars, out: np.ndarray = masks
            ) -> None:
                g.fill_masks([seq.grammar for seq in s], out)  # type: ignore[misc]

            step, cpu = stepped(seqs, ahead, fill, steps)
            print(
                f"{threads:>7} {groups:>12} {step * 1e3:>8.3f} {step / n * 1e6:>8.1f} "
                f"{cpu * 1e3:>7.2f}"
            )
            grammars.close()


def process_rows(tokenizer: Tokenizer, spec: StructuredOutput, n: int, steps: int) -> None:
    print(f"{'workers':>7} {'ms/step':>8} {'us/mask':>8} {'round trip us':>13}")
    most = max(mask_worker_count(), 1)
    for count in sorted({most, *(c for c in (1, 2, 4, 8) if c < most)}):
        grammars = GrammarCompiler(tokenizer, threads=1)
        workers = MaskWorkers(grammars, tokenizer, count, n)
        try:
            if not workers.wait_ready(60):
                raise SystemExit(f"{count} mask workers did not start within 60 s")
            seqs, ahead = sequences(grammars, tokenizer, spec, n, steps)
            masks = np.zeros((n, grammars.mask_words), np.int32)
            trip = round_trip(workers)

            def fill(s: list[Sequence], w: MaskWorkers = workers, out: np.ndarray = masks) -> None:
                w.fill(s, out)

            step, _ = stepped(seqs, ahead, fill, steps)
            print(f"{count:>7} {step * 1e3:>8.3f} {step / n * 1e6:>8.1f} {trip * 1e6:>13.0f}")
        finally:
            workers.close()
            grammars.close()


def round_trip(workers: MaskWorkers) -> float:
    """Median seconds of an empty request to every worker and their replies."""
    seconds = []
    for _ in range(50):
        started = time.perf_counter()
        workers.ping()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF whose tokenizer to use (default: the default model)")
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-threads", action="store_true", help="only the worker processes")
    parser.add_argument(
        "--callback-tokenizer",
        action="store_true",
        help="threads only, llguidance calling back into Python to tokenize (the fallback)",
    )
    args = parser.parse_args()
    tokenizer = Tokenizer.from_gguf(GGUFFile.open(resolve_model_path(args.model)))
    schema = json.loads(SCHEMA_BODY.read_text())["response_format"]["json_schema"]["schema"]
    spec = StructuredOutput.json_schema(schema)
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{args.seqs} masks of {tokenizer.vocab_size} tokens a step, {args.steps} steps; "
        f"{cpus} CPUs: mask_threads() = {mask_threads()}, "
        f"mask_worker_count() = {mask_worker_count()}"
    )
    probe = GrammarCompiler(tokenizer)
    probe.lltokenizer()
    native = probe.native_tokenizer and not args.callback_tokenizer
    print(f"llguidance's tokenizer: {'native (Rust)' if native else 'Python callback'}")
    if not args.no_threads:
        threads_rows(tokenizer, spec, args.seqs, args.steps, args.callback_tokenizer)
    if not args.callback_tokenizer:
        process_rows(tokenizer, spec, args.seqs, args.steps)


if __name__ == "__main__":
    main()
