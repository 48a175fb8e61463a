"""A sequence's output text: incremental detokenization plus stop strings.

While a stop string could still be forming at the end of the text, that tail is held back
from streaming, so a client never receives text that a stop string later cuts off.
"""

from __future__ import annotations

from ember.engine.sampling_params import SamplingParams
from ember.model.detokenizer import IncrementalDetokenizer
from ember.model.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self._detokenizer = IncrementalDetokenizer(
            tokenizer, skip_special_tokens=params.skip_special_tokens
        )
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._holdback = max((len(s) for s in self._stops), default=1) - 1
        self.text = ""
        self._emitted = 0

    def push(self, token_id: int) -> bool:
        """Add a token's text; True when a stop string completed (the text is cut there)."""
        search_from = max(0, len(self.text) - self._holdback)
        self.text += self._detokenizer.push(token_id)
        return self._cut_at_stop(search_from)

    def finish(self) -> bool:
        """Flush bytes still buffered at the end of generation; True if that completed a stop."""
        search_from = max(0, len(self.text) - self._holdback)
        self.text += self._detokenizer.flush()
        return self._cut_at_stop(search_from)

    def take_delta(self, final: bool) -> str:
        """Text not yet handed out; keeps back a possible stop-string prefix unless final."""
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._holdback)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _cut_at_stop(self, search_from: int) -> bool:
        if not self._stops:
            return False
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = self.text.find(stop, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return False
        index, stop = best
        self.text = self.text[: index + (len(stop) if self._include_stop else 0)]
        return True
