"""Constrained decoding with llguidance: each spec compiled once against the model's tokenizer,
a matcher per constrained sequence, and a step's masks of allowed tokens.

A mask is llguidance's: one bit per token id, 32 to an int32 word, token i allowed when bit
i % 32 of word i // 32 is set. The sampler (the host's, or the device kernel) drops the tokens
a row's mask leaves out before it samples; the sequence's matcher then consumes the token.
Compiling takes from a millisecond to a second for very large schemas, and llguidance drops
the GIL meanwhile, so `submit` compiles on a thread of its own while steps go on.

Where a step's masks are computed: on more than one CPU, an engine's `MaskWorkers`
(`engine/mask_workers.py`) compute them in worker processes, each holding a mirror matcher per
sequence compiled by a `GrammarCompiler` of its own; the engine's thread computes with its own
matchers (`threads=1`) the masks no worker does; the engine's matchers still take every token
and finish a sequence whose grammar is complete. `fill_masks` is that share, the fallback for a
worker that fails, and the whole step in an engine without workers (one CPU, or
`EngineConfig.mask_workers` 0).

Why processes: llguidance's masks do not scale over threads of one process. Copies of one
compiled matcher (`LLMatcher.deep_copy`) share its lexer, and computing a mask holds that
lexer's lock, so their masks are computed one after another (on an H100 host, 64 of them took
4.1 ms a step with 15 threads, the time of one thread). Over independent compiles, computing a
mask tokenizes the grammar's forced bytes (~47 times for 64 masks of the benchmark's schema):
llguidance does it in Rust where its own copy of our tokenizer is exact (every byte-level
tokenizer without user-defined tokens), otherwise it calls back into Python through
`TokenizerView`, and each call takes the GIL (`engine/grammar_tokenizer.py`). Even without
callbacks, 2 threads on a 2-core machine gave 1.0-1.25x, where 2 processes gave 1.5-1.6x
(docs/benchmarks.md). Without workers, each spec is compiled into up to `lexer_groups`
independent matchers (the first at once, the others on the compile thread while copies of the
first serve), and new sequences are copied from them in turn, so that threads at least do not
wait on one lexer.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.util import find_spec
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from ember.engine.grammar_tokenizer import callback_lltokenizer, native_lltokenizer
from ember.engine.structured_output import StructuredOutput
from ember.errors import EmberError, StructuredOutputError

if TYPE_CHECKING:
    from llguidance import LLExecutor, LLMatcher, LLTokenizer

    from ember.model.tokenizer import Tokenizer

Masks = npt.NDArray[np.int32]
T = TypeVar("T")

# An error message from llguidance can carry a dump of the parser's state after its first line.
_MAX_ERROR_CHARS = 400


class GrammarEngineMissingError(EmberError):
    """llguidance is not installed (it comes with `pip install ember-llm`)."""


def mask_threads() -> int:
    """Threads that fill a step's masks without mask workers: the CPUs this process may run on,
    less one for the engine's own thread, at most 4. A mask takes ~56 us (the benchmark's JSON
    schema over a 49k vocabulary, H100 host), 64 of them 3.6 ms on one thread; but llguidance's
    threads scale poorly even over independent matchers (`scripts/bench_mask_fill.py` on the
    H100 host: 3.2 ms on 4 threads, 3.8 ms on 15; 1.27x on 2 threads here): more only add
    contention. Named here rather than left to llguidance's default (80 % of the CPUs it
    detects), so that the count follows this process's CPU affinity."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cpus or 1) - 1))


def mask_words(vocab_size: int) -> int:
    """int32 words in one token mask."""
    return (vocab_size + 31) // 32


def allowed_tokens(mask: Masks, vocab_size: int) -> npt.NDArray[np.bool_]:
    """The mask as one bool per token id."""
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")
    return bits[:vocab_size].astype(np.bool_)


class _LexerGroups:
    """A spec's independent compiles (each with its own lexer), handed out in turn."""

    def __init__(self, first: LLMatcher, groups: int) -> None:
        self.templates = [first]
        self.groups = groups
        self.growing = False  # a compile of one more group is under way
        self._turn = 0

    def next_template(self) -> LLMatcher:
        template = self.templates[self._turn % len(self.templates)]
        self._turn += 1
        return template

    @property
    def wants_more(self) -> bool:
        return len(self.templates) < self.groups and not self.growing


class GrammarCompiler:
    """Compiles `StructuredOutput`s for one tokenizer; the last `cache_size` compiled grammars
    are kept, so a schema sent again costs a copy of its compiled matcher (microseconds), and
    one compile for each of its first `lexer_groups` sequences."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int | None = None,
        cache_size: int = 256,
        lexer_groups: int = 1,
        threads: int | None = None,
    ) -> None:
        """`vocab_size`: the model's (its logits' width; default the tokenizer's). A file may
        hold more tokens than the model has rows: masks are cut to the model's.
        `lexer_groups`: independent compiles per spec, whose sequences' masks are computed in
        parallel (an engine's: its mask threads; a compiler that only checks specs: 1).
        `threads`: threads `fill_masks` computes on (None: `mask_threads()`; 1: the caller's
        own thread, as a mask worker process and an engine with mask workers do)."""
        if lexer_groups < 1:
            raise ValueError(f"lexer_groups must be at least 1, not {lexer_groups}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self._tokenizer = tokenizer
        self._cache_size = cache_size
        self._lexer_groups = lexer_groups
        self._compiled: OrderedDict[StructuredOutput, _LexerGroups] = OrderedDict()
        self._lock = threading.Lock()
        self._lltokenizer: LLTokenizer | None = None
        # Whether masks are computed with no call into Python (known once `lltokenizer` ran).
        self.native_tokenizer: bool | None = None
        self._executor: LLExecutor | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._threads = threads
        self.vocab_size = tokenizer.vocab_size if vocab_size is None else vocab_size
        self.mask_words = mask_words(self.vocab_size)
        # llguidance's masks are the tokenizer's width, which may be wider than the model's.
        self.tokenizer_words = mask_words(tokenizer.vocab_size)

    def matcher(self, spec: StructuredOutput) -> LLMatcher:
        """A new matcher for `spec`, at its start; `StructuredOutputError` if it cannot compile
        or can produce nothing."""
        copied = self._copy(spec)
        if copied is not None:
            return copied
        compiled = self._compile(spec)
        with self._lock:
            if spec not in self._compiled:
                self._compiled[spec] = _LexerGroups(compiled, self._lexer_groups)
                while len(self._compiled) > self._cache_size:
                    self._compiled.popitem(last=False)
        return compiled.deep_copy()

    def submit(self, spec: StructuredOutput) -> Future[LLMatcher]:
        """`matcher(spec)` on the compiler's own thread (done at once when cached)."""
        copied = self._copy(spec)
        if copied is not None:
            done: Future[LLMatcher] = Future()
            done.set_result(copied)
            return done
        return self._background(self.matcher, spec)

    def _copy(self, spec: StructuredOutput) -> LLMatcher | None:
        """A copy of the spec's template whose turn it is (None if it is not compiled); while
        the spec has fewer lexer groups than it may, one more is compiled in the background."""
        with self._lock:
            groups = self._compiled.get(spec)
            if groups is None:
                return None
            self._compiled.move_to_end(spec)
            copied = groups.next_template().deep_copy()
            grow = groups.wants_more
            if grow:
                groups.growing = True
        if grow:
            self._background(self._grow, spec, groups)
        return copied

    def _grow(self, spec: StructuredOutput, groups: _LexerGroups) -> None:
        compiled = None
        try:
            compiled = self._compile(spec)
        finally:
            # One locked update: a turn between the two could start one compile too many.
            with self._lock:
                if compiled is not None:
                    groups.templates.append(compiled)
                groups.growing = False

    def _background(self, work: Callable[..., T], *args: object) -> Future[T]:
        with self._lock:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="ember-grammar")
            return self._thread.submit(work, *args)

    def fill_masks(self, matchers: Sequence[LLMatcher], out: Masks) -> None:
        """Row i of `out` (int32 [>= len(matchers), mask_words]) = matchers[i]'s mask now."""
        if not matchers:
            return
        if out.dtype != np.int32 or out.ndim != 2 or out.shape[1] != self.mask_words:
            raise ValueError(f"masks need int32 [rows, {self.mask_words}], got {out.shape}")
        if len(matchers) > out.shape[0] or not out.flags.c_contiguous:
            raise ValueError(f"{len(matchers)} masks need a contiguous array of as many rows")
        if self.tokenizer_words != self.mask_words:
            full = np.empty((len(matchers), self.tokenizer_words), np.int32)
            self._fill(matchers, full)
            self.cut_masks(full, out[: len(matchers)])
            return
        self._fill(matchers, out)

    def cut_masks(self, full: Masks, out: Masks) -> None:
        """`out` = llguidance's masks `full` (the tokenizer's width) at the model's width: no
        token beyond the model's rows (`out` may be a view; its rows are `full`'s)."""
        if full.shape[1] == self.mask_words:
            out[:] = full
            return
        out[:] = full[:, : self.mask_words]
        spare = self.mask_words * 32 - self.vocab_size
        if spare:  # the last word's bits past the model's last token
            out[:, -1] &= np.int32((1 << (32 - spare)) - 1)

    def _fill(self, matchers: Sequence[LLMatcher], out: Masks) -> None:
        words = out.shape[1]
        if len(matchers) == 1 or self._threads == 1:  # one mask: dispatch costs more
            for row, matcher in enumerate(matchers):
                matcher.unsafe_compute_mask_ptr(out.ctypes.data + row * words * 4, words * 4)
            return
        executor = self._executor
        if executor is None:
            from llguidance import LLExecutor

            executor = self._executor = LLExecutor(self._threads or mask_threads())
        pairs = [(matcher, i) for i, matcher in enumerate(matchers)]
        executor.unsafe_compute_mask_ptr(pairs, out.ctypes.data, out.shape[1] * 4, out.shape[0])

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)

    def _compile(self, spec: StructuredOutput) -> LLMatcher:
        from llguidance import LLMatcher

        try:
            grammar = spec.grammar()
        except ValueError as error:  # not JSON, or not a JSON object
            raise StructuredOutputError(_message(spec, str(error)), spec.param) from None
        matcher = LLMatcher(self.lltokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise StructuredOutputError(_message(spec, matcher.get_error()), spec.param)
        # A grammar with no finite output (`{"$ref": "#"}`) fails at its first mask.
        probe = matcher.deep_copy()
        probe.compute_bitmask()
        if probe.is_error():
            raise StructuredOutputError(
                _message(spec, "it can produce no output (a reference cycle with no way out?)"),
                spec.param,
            )
        return matcher

    def lltokenizer(self) -> LLTokenizer:
        """llguidance's view of the vocabulary, built on first use: its own Rust copy of our
        tokenizer where that is exact, else `TokenizerView` (`engine/grammar_tokenizer.py`)."""
        with self._lock:
            if self._lltokenizer is None:
                if find_spec("llguidance") is None:
                    raise GrammarEngineMissingError(
                        "structured outputs need the llguidance package: pip install llguidance"
                    )
                lltokenizer = native_lltokenizer(self._tokenizer)
                self.native_tokenizer = lltokenizer is not None
                if lltokenizer is None:
                    lltokenizer = callback_lltokenizer(self._tokenizer)
                self._lltokenizer = lltokenizer
            return self._lltokenizer


def _message(spec: StructuredOutput, error: str) -> str:
    # llguidance's text: the error, caret lines under the source, then maybe its state dump.
    lines = [line.strip() for line in error.split("<state>", 1)[0].splitlines()]
    first = " ".join(line for line in lines if line and set(line) - set("^ |0123456789"))
    first = first or "unknown error"
    if len(first) > _MAX_ERROR_CHARS:
        first = first[:_MAX_ERROR_CHARS] + "..."
    what = {
        "json_schema": "JSON schema",
        "json_object": "JSON mode",
        "regex": "regular expression",
        "choice": "choice list",
        "grammar": "grammar",
    }[spec.kind.value]
    return f"'{spec.param}': this {what} is not supported: {first}"
