"""What one step's token masks cost: N sequences under the structured-output benchmark's JSON
schema, each at its own point of a valid document, their masks filled by
`GrammarCompiler.fill_masks` with 1, 2, 4, ... threads, the sequences copied from one compile
(one lexer, whose lock serialises their masks) or from one compile per thread.

    python scripts/bench_mask_fill.py [--model M] [--seqs 64] [--repeats 20]

Prints the median milliseconds per step and microseconds per mask for each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from llguidance import LLExecutor, LLMatcher

from ember.engine.grammar import GrammarCompiler, mask_threads
from ember.engine.structured_output import StructuredOutput
from ember.model.default_model import resolve_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.tokenizer import Tokenizer

SCHEMA_BODY = Path(__file__).parent / "bench_data" / "json_schema_body.json"
_NONE = SimpleNamespace(templates=())
NAMES = ("hammer", "rake", "garden hose", "old bicycle", "paint can", "ladder")
KINDS = ("tool", "food", "book", "toy")


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
    grammars: GrammarCompiler, tokenizer: Tokenizer, spec: StructuredOutput, n: int
) -> list[LLMatcher]:
    """n matchers, each somewhere in its own document."""
    matchers = []
    for number in range(n):
        ids = tokenizer.encode(document(number), add_special_tokens=False)
        matcher = grammars.matcher(spec)
        position = (number * 7919) % (len(ids) - 1)
        assert matcher.consume_tokens(ids[:position]), (number, position)
        matchers.append(matcher)
    return matchers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF whose tokenizer to use (default: the default model)")
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_gguf(GGUFFile.open(resolve_model_path(args.model)))
    schema = json.loads(SCHEMA_BODY.read_text())["response_format"]["json_schema"]["schema"]
    spec = StructuredOutput.json_schema(schema)
    print(f"{args.seqs} masks of {tokenizer.vocab_size} tokens; mask_threads() = {mask_threads()}")
    print(f"{'threads':>7} {'lexer groups':>12} {'ms/step':>8} {'us/mask':>8}")
    most = max(mask_threads(), 1)
    counts = sorted({1, most, *(t for t in (2, 4, 8, 16, 32) if t < most)})
    for threads in counts:
        for groups in sorted({1, threads}):
            grammars = GrammarCompiler(tokenizer, lexer_groups=groups)
            grammars._executor = LLExecutor(threads)  # the thread count under test
            while len(grammars._compiled.get(spec, _NONE).templates) < groups:
                grammars.matcher(spec)  # the groups compile on the compiler's thread
                time.sleep(0.005)
            matchers = sequences(grammars, tokenizer, spec, args.seqs)
            masks = np.zeros((args.seqs, grammars.mask_words), np.int32)
            seconds = []
            for _ in range(args.repeats):
                # Fresh copies each time: a matcher keeps the mask of its state.
                fresh = [matcher.deep_copy() for matcher in matchers]
                started = time.perf_counter()
                grammars.fill_masks(fresh, masks)
                seconds.append(time.perf_counter() - started)
            step = float(np.median(seconds))
            print(f"{threads:>7} {groups:>12} {step * 1e3:>8.3f} {step / args.seqs * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
