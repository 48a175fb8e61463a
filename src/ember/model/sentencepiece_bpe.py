"""SentencePiece BPE (`tokenizer.ggml.model` = "llama"): Llama 1/2, Mistral 7B, older files.

The file carries each piece's score instead of merges. SentencePiece's BPE (and llama.cpp's
`llm_tokenizer_spm`) starts from the characters of the text, with spaces written as "▁" and
one "▁" in front (`add_space_prefix`), and repeatedly joins the adjacent pair whose join is a
piece of the highest score; a character with no piece becomes its UTF-8 bytes' `<0xXX>` tokens.
That is a BPE whose merges are every split of every piece into two pieces, ranked by the
joined piece's score (how Hugging Face converts these vocabularies too), with byte fallback:
built here on the `tokenizers` library.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as BackendTokenizer

from ember.errors import ModelFormatError
from ember.model.tokenizer_metadata import (
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    MetadataFields,
    TokenizerParts,
    ids_of_type,
)

_SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Only these spell the same text with no pre-tokenizer; llama.cpp ignores the key for this model.
_PRE_TOKENIZERS = ("default", "llama-spm")


def sentencepiece_parts(
    fields: MetadataFields, tokens: list[str], token_types: list[int], named: set[int]
) -> TokenizerParts:
    """The backend for a `llama` tokenizer model; `named`: the BOS/EOS/UNK/PAD ids."""
    pre = fields.optional_str("tokenizer.ggml.pre") or "default"
    if pre not in _PRE_TOKENIZERS:
        raise ModelFormatError(
            f"{fields.source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) with the SentencePiece "
            f"tokenizer model 'llama' is not supported (known: {', '.join(_PRE_TOKENIZERS)})"
        )
    if fields.optional_bool("tokenizer.ggml.remove_extra_whitespaces", default=False):
        raise ModelFormatError(
            f"{fields.source}: tokenizer.ggml.remove_extra_whitespaces is not supported"
        )
    scores = fields.optional_float_list("tokenizer.ggml.scores", len(tokens))
    if scores is None:
        raise ModelFormatError(
            f"{fields.source}: tokenizer.ggml.scores is missing (a SentencePiece vocabulary "
            "ranks its merges by them)"
        )
    if len(set(tokens)) != len(tokens):
        raise ModelFormatError(f"{fields.source}: tokenizer.ggml.tokens has duplicate pieces")
    if sum(_byte_of(token) is not None for token in tokens) < 256:
        raise ModelFormatError(
            f"{fields.source}: the 'llama' tokenizer has no <0x00>..<0xFF> byte tokens; "
            "Ember supports SentencePiece vocabularies with byte fallback only"
        )
    special = frozenset(ids_of_type(token_types, CONTROL) | named)
    user_defined = frozenset(ids_of_type(token_types, USER_DEFINED) - special)
    add_prefix = fields.optional_bool("tokenizer.ggml.add_space_prefix", default=True)
    backend = _build_backend(tokens, scores, token_types, special, user_defined, add_prefix)
    return TokenizerParts(backend, special, user_defined, _token_bytes)


def _merges(
    tokens: Sequence[str], scores: Sequence[float], token_types: Sequence[int]
) -> list[tuple[str, str]]:
    """Every (left, right) split of a normal or user-defined piece into two pieces, the best
    joined score first (ties: the lower id, then the shorter left part)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for i in ids_of_type(token_types, NORMAL) | ids_of_type(token_types, USER_DEFINED):
        piece = tokens[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _build_backend(
    tokens: Sequence[str],
    scores: Sequence[float],
    token_types: Sequence[int],
    special: frozenset[int],
    user_defined: frozenset[int],
    add_prefix: bool,
) -> BackendTokenizer:
    bpe = models.BPE(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=_merges(tokens, scores, token_types),
        fuse_unk=True,
        byte_fallback=True,
        unk_token=_unknown_token(tokens, token_types),
    )
    backend = BackendTokenizer(bpe)
    # Applied to each stretch of text between added tokens, so a "▁" also goes in front of the
    # text after a special token, as llama.cpp does (`is_prev_special`).
    spaces = normalizers.Replace(" ", _SPACE)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend(_SPACE), spaces]) if add_prefix else spaces
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in sorted(special)]
    )
    if user_defined:
        backend.add_tokens(
            [AddedToken(tokens[i], special=False, normalized=False) for i in sorted(user_defined)]
        )
    return backend


def _unknown_token(tokens: Sequence[str], token_types: Sequence[int]) -> str | None:
    unknown = sorted(ids_of_type(token_types, UNKNOWN))
    return tokens[unknown[0]] if unknown else None


def _byte_of(token: str) -> int | None:
    match = _BYTE_TOKEN.fullmatch(token)
    return int(match.group(1), 16) if match else None


def _token_bytes(token: str) -> bytes:
    """`<0xXX>` is that byte; any other piece is its text with "▁" as a space."""
    byte = _byte_of(token)
    if byte is not None:
        return bytes((byte,))
    return token.replace(_SPACE, " ").encode("utf-8")
