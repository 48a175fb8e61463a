"""Token ids -> text, one token at a time, for streaming.

A byte-level token can hold part of a UTF-8 character (an emoji is often three or four
tokens), so text is released only once its characters are complete. Bytes go through an
incremental UTF-8 decoder, which costs O(token length) per token with no re-decoding of the
sequence, and matches `Tokenizer.decode` exactly: both replace invalid bytes with U+FFFD by
the same maximal-subpart rule, and both end a run of bytes at an added (special or
user-defined) token, while a special token skipped from the output joins the bytes around it.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.model.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """`push` each new token id and get back only the text it completed."""

    __slots__ = ("_added", "_partial", "_parts", "_skip_special", "_tokenizer", "_utf8")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._added = tokenizer.added_ids
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = False  # the decoder holds bytes of an unfinished character
        self._parts: list[str] = []

    def push(self, token_id: int) -> str:
        """The text this token completes; "" while a character is still partial."""
        if token_id in self._added:
            tokenizer = self._tokenizer
            if self._skip_special and tokenizer.is_special(token_id):
                return ""
            delta = self._end_bytes() + tokenizer.token_text(token_id)
        else:
            data, whole = self._tokenizer.token_piece(token_id)
            if whole is not None and not self._partial:
                # Most tokens are whole characters: what the decoder would return, unchanged.
                delta = whole
            else:
                delta = self._utf8.decode(data)
                self._partial = bool(self._utf8.getstate()[0])
        if delta:
            self._parts.append(delta)
        return delta

    def flush(self) -> str:
        """At the end of generation: bytes of a character that never completed, as U+FFFD."""
        delta = self._end_bytes()
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        """All text released so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def _end_bytes(self) -> str:
        pending = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._partial = False
        return pending
