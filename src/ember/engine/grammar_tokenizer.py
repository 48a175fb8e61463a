"""llguidance's view of the model's tokenizer: its own Rust copy of our `tokenizers` backend
where that is exactly our tokenizer, else a view that calls back into Python.

llguidance needs every token's bytes, the special ids, and an encoder: computing a mask
tokenizes the grammar's forced bytes (`{"items": [{"name": "` ...). Through `TokenizerView`
each such encode is a call into Python that takes the GIL (47 calls for 64 masks of the
benchmark's schema, 0.9 of 4.9 ms), so llguidance's threads wait on each other's callbacks.
Given our backend's JSON instead, llguidance encodes in Rust with no Python at all
(`native_lltokenizer`).

It does so exactly only where what llguidance makes of a `tokenizers` JSON (its
`toktrie_hf_tokenizers` crate) is our tokenizer:
- the decoder is byte-level (GPT-2's byte alphabet): with SentencePiece's byte fallback
  llguidance drops the normalizer's `Prepend("▁")`, so its encoder is no longer ours;
- every id's bytes, and whether it is special, are ours: llguidance marks every added token
  special, our user-defined ones included (Qwen3's `<think>`, `<tool_call>` are text to us), and
  an id missing from the JSON's vocabulary (a duplicated token text) gets no bytes.
Anything else keeps `TokenizerView`: masks are never computed against a tokenizer that is
slightly wrong.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llguidance import LLTokenizer

    from ember.model.tokenizer import Tokenizer

# llguidance spells a special token as this byte followed by its text (`TokTrie`'s marker).
_SPECIAL_MARKER = b"\xff"


class TokenizerView:
    """Ember's tokenizer as llguidance's `TokenizerWrapper` reads one: every token's bytes, the
    special ids, and an encoder."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        vocab = range(tokenizer.vocab_size)
        self.tokens = [tokenizer.token_bytes(i) for i in vocab]
        self.special_token_ids = [i for i in vocab if tokenizer.is_special(i)]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_special_tokens=False)


def callback_lltokenizer(tokenizer: Tokenizer) -> LLTokenizer:
    """llguidance's tokenizer over `TokenizerView` (~0.2 s for 49k tokens)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    view = TokenizerWrapper(TokenizerView(tokenizer))
    return LLTokenizer(view, eos_token=sorted(tokenizer.stop_ids))


def native_lltokenizer(tokenizer: Tokenizer) -> LLTokenizer | None:
    """llguidance's tokenizer built in Rust from our backend's JSON, when it is exactly ours
    (None otherwise: see the module's docstring). ~0.4 s for 49k tokens, the check included."""
    from llguidance import LLTokenizer

    spec = tokenizer.to_json()
    if not _byte_level(json.loads(spec)):
        return None
    native = LLTokenizer(spec, n_vocab=tokenizer.vocab_size, eos_token=sorted(tokenizer.stop_ids))
    return native if first_mismatch(native, tokenizer) is None else None


def _byte_level(spec: dict[str, object]) -> bool:
    decoder = spec.get("decoder")
    normalizer = spec.get("normalizer")
    # llguidance removes a `Prepend` from a normalizer sequence; ours never has one with a
    # byte-level decoder, but a change there must not go unnoticed.
    return (
        isinstance(decoder, dict)
        and decoder.get("type") == "ByteLevel"
        and "Prepend" not in json.dumps(normalizer)
    )


def first_mismatch(lltokenizer: LLTokenizer, tokenizer: Tokenizer) -> int | None:
    """The first id whose bytes or specialness differ between llguidance's tokenizer and ours
    (as `TokenizerView` hands them to llguidance), or None."""
    if lltokenizer.vocab_size != tokenizer.vocab_size:
        return min(lltokenizer.vocab_size, tokenizer.vocab_size)
    # `decode_bytes` drops the marker of a special token, and `is_special_token` is true of any
    # token whose bytes begin with it (so of the byte 0xFF's, on either side): compared as the
    # marked bytes llguidance holds.
    for token_id in range(tokenizer.vocab_size):
        theirs = lltokenizer.decode_bytes([token_id])
        if lltokenizer.is_special_token(token_id):
            theirs = _SPECIAL_MARKER + theirs
        ours = tokenizer.token_bytes(token_id)
        if tokenizer.is_special(token_id):
            ours = _SPECIAL_MARKER + ours
        if theirs != ours:
            return token_id
    return None
