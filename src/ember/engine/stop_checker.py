"""When a sequence stops: the one check that every path runs on each generated token.

A sequence ends on a stop token (the tokenizer's end-of-turn/EOS ids unless `ignore_eos`,
plus `stop_token_ids`), on a stop string completing in its text, or at `max_tokens`. The
engine runs it (with text when it detokenizes itself, ids only in a worker whose server holds
the text), and so does the HTTP server on the tokens its worker reports, with the text.
"""

from __future__ import annotations

from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.engine.text_stream import TextStream
from ember.model.tokenizer import Tokenizer


class StopChecker:
    __slots__ = ("_max_tokens", "_num_tokens", "stop_ids", "text")

    def __init__(self, params: SamplingParams, tokenizer: Tokenizer, *, with_text: bool) -> None:
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else tokenizer.stop_ids
        )
        # The output text and its stop strings; None where text is made elsewhere.
        self.text = TextStream(tokenizer, params) if with_text else None
        self._max_tokens = params.max_tokens
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        """Generated tokens accepted so far (the one that stopped the sequence included)."""
        return self._num_tokens

    def accept(self, token_id: int) -> FinishReason | None:
        """Take one generated token; why the sequence ends with it, or None if it goes on.
        A stop token's text is not added to the output."""
        self._num_tokens += 1
        if token_id in self.stop_ids:
            return FinishReason.STOP
        text = self.text
        if text is not None and text.push(token_id):
            return FinishReason.STOP
        if self._num_tokens >= self._max_tokens:
            # Bytes still held for an incomplete character may complete a stop string.
            return FinishReason.STOP if text is not None and text.finish() else FinishReason.LENGTH
        return None
