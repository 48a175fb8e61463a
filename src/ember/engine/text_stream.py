"""A sequence's output text: incremental detokenization plus stop strings.

While a stop string could still be forming at the end of the text, that tail is held back
from streaming, so a client never receives text that a stop string later cuts off.

Each token costs O(its text + the longest stop string), whatever the length of the text so
far: new text is searched only together with the held-back tail before it (a stop string
that ends in the new text starts at most `longest - 1` characters before it), and text is
kept as a list of pieces, joined only when it is handed out.
"""

from __future__ import annotations

from ember.engine.sampling_params import SamplingParams
from ember.model.detokenizer import IncrementalDetokenizer
from ember.model.tokenizer import Tokenizer


class TextStream:
    __slots__ = (
        "_detokenizer",
        "_holdback",
        "_include_stop",
        "_pending",
        "_pending_len",
        "_stops",
        "_tail",
        "_taken",
    )

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self._detokenizer = IncrementalDetokenizer(
            tokenizer, skip_special_tokens=params.skip_special_tokens
        )
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._holdback = max((len(s) for s in self._stops), default=1) - 1
        self._taken: list[str] = []  # text handed out by take_delta, in order
        self._pending: list[str] = []  # text after that, not handed out yet
        self._pending_len = 0
        # The text's last `_holdback` characters (a suffix of the pending text): where a stop
        # string that ends in the next piece of text would have to start.
        self._tail = ""

    @property
    def text(self) -> str:
        """All text so far (cut at a stop string once one completed)."""
        if len(self._taken) > 1:
            self._taken[:] = ["".join(self._taken)]
        return "".join(self._taken) + "".join(self._pending)

    def push(self, token_id: int) -> bool:
        """Add a token's text; True when a stop string completed (the text is cut there)."""
        delta = self._detokenizer.push(token_id)
        return self._add(delta) if delta else False

    def finish(self) -> bool:
        """Flush bytes still buffered at the end of generation; True if that completed a stop."""
        delta = self._detokenizer.flush()
        return self._add(delta) if delta else False

    def take_delta(self, final: bool) -> str:
        """Text not yet handed out; keeps back a possible stop-string prefix unless final."""
        count = self._pending_len if final else self._pending_len - self._holdback
        if count <= 0:
            return ""
        pending = self._pending
        text = pending[0] if len(pending) == 1 else "".join(pending)
        if count == len(text):  # the tail stays: a stop string may still start in it
            delta = text
            pending.clear()
        else:
            delta = text[:count]
            pending[:] = [text[count:]]
        self._pending_len -= count
        self._taken.append(delta)
        return delta

    def _add(self, delta: str) -> bool:
        if not self._stops:
            self._pending.append(delta)
            self._pending_len += len(delta)
            return False
        window = self._tail + delta
        found = _first_stop(window, self._stops)
        if found is None:
            self._pending.append(delta)
            self._pending_len += len(delta)
            # (the whole window while it is shorter: a negative start would cut it)
            self._tail = window[-self._holdback :] if self._holdback else ""
            return False
        index, stop = found
        end = index + (len(stop) if self._include_stop else 0)  # the text ends here in window
        tail_len = len(self._tail)
        if end >= tail_len:
            if end > tail_len:
                self._pending.append(delta[: end - tail_len])
                self._pending_len += end - tail_len
        else:  # the cut falls inside the tail: drop its end (text handed out by a final
            # take_delta before the end of generation included)
            drop = tail_len - end
            text = "".join(self._pending)
            kept = text[: max(0, len(text) - drop)]
            self._pending[:] = [kept] if kept else []
            self._pending_len = len(kept)
            drop -= len(text) - len(kept)
            if drop:
                taken = "".join(self._taken)
                self._taken[:] = [taken[: len(taken) - drop]]
        self._tail = ""
        return True


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest stop string in `text` (the first listed, among those at one index)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best
