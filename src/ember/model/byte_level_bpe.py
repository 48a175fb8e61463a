"""Byte-level BPE (`tokenizer.ggml.model` = "gpt2"): GPT-2, Llama 3, Qwen2, SmolLM2 ...

Every byte is spelled as one printable character (GPT-2's byte alphabet), the text is cut by
the pre-tokenizer the vocabulary was trained with (`tokenizer.ggml.pre`), and the merges run
within each piece. Built on the `tokenizers` library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import cast

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from ember.errors import ModelFormatError
from ember.model.tokenizer_metadata import (
    CONTROL,
    USER_DEFINED,
    MetadataFields,
    TokenizerParts,
    ids_of_type,
)


@dataclass(frozen=True, slots=True)
class _Splitting:
    """How raw text is cut before BPE runs, i.e. the pre-tokenizer the merges were learned with."""

    # None: GPT-2's own regex, built into the ByteLevel pre-tokenizer.
    regex: str | None = None
    # StarCoder-style vocabularies put every digit in a piece of its own; splitting digits first
    # also changes how the whitespace in front of them groups ("  1" -> "ĠĠ", "1").
    individual_digits: bool = False
    # Llama 3's tokenizer.json sets `ignore_merges`: a piece found whole in the vocabulary is
    # one token, without running the merges (llama.cpp does the same for that pre-type).
    ignore_merges: bool = False
    # Qwen2's tokenizer.json normalizes text to NFC first (llama.cpp does not; we follow the
    # model's own tokenizer, which it was trained with): "e" + U+0301 is then "é".
    nfc: bool = False


# Regexes as llama.cpp (src/llama-vocab.cpp) and the models' tokenizer.json files spell them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_GPT2 = _Splitting()
_DIGITS_THEN_GPT2 = _Splitting(individual_digits=True)
_LLAMA3 = _Splitting(regex=_LLAMA3_SPLIT, ignore_merges=True)
_QWEN2 = _Splitting(regex=_QWEN2_SPLIT, nfc=True)
_QWEN2_NO_NFC = _Splitting(regex=_QWEN2_SPLIT)

# `tokenizer.ggml.pre` values, grouped as llama.cpp groups them. Golden ids from the model's own
# Hugging Face tokenizer check 'smollm' (tests/fixtures/tokenizer_golden.json), ids from the
# published tokenizer.json definitions check 'llama-bpe' and 'qwen2' (tests/fixtures/families);
# the others follow llama.cpp's table. An unknown name is refused rather than tokenized slightly
# wrong.
_SPLITTINGS: Mapping[str, _Splitting] = {
    "default": _GPT2,
    "gpt2": _GPT2,
    "gpt-2": _GPT2,
    "mpt": _GPT2,
    "olmo": _GPT2,
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "codeshell": _DIGITS_THEN_GPT2,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "smaug-bpe": _LLAMA3,
    "falcon3": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2_NO_NFC,
}


@cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character map, inverted: each vocabulary character to the byte it spells.

    Printable bytes stand for themselves; the other 68 are shifted to U+0100 and up so that
    every token is printable text (a space is 'Ġ', a newline 'Ċ').
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: dict[str, int] = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def byte_alphabet_tokens() -> list[str]:
    """The 256 single-byte tokens of a byte-level vocabulary, in byte order."""
    by_byte = {b: c for c, b in _byte_alphabet().items()}
    return [by_byte[b] for b in range(256)]


def byte_level_parts(
    fields: MetadataFields, tokens: list[str], token_types: list[int], named: set[int]
) -> TokenizerParts:
    """The backend for a `gpt2` tokenizer model; `named`: the BOS/EOS/UNK/PAD ids."""
    pre = fields.optional_str("tokenizer.ggml.pre") or "default"
    splitting = _SPLITTINGS.get(pre)
    if splitting is None:
        raise ModelFormatError(
            f"{fields.source}: unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
            f"Ember knows {', '.join(sorted(_SPLITTINGS))}"
        )
    merges = _parse_merges(fields.require_str_list("tokenizer.ggml.merges"), fields.source)
    respelled = _in_alphabet_all(tokens)
    special, user_defined = _added_token_ids(tokens, token_types, respelled, named)
    backend = _build_backend(respelled, merges, splitting, tokens, special, user_defined)
    return TokenizerParts(backend, special, user_defined, _token_bytes)


def _added_token_ids(
    tokens: Sequence[str], token_types: Sequence[int], respelled: Sequence[str], named: set[int]
) -> tuple[frozenset[int], frozenset[int]]:
    """(special, user-defined) token ids: the ones matched whole in text instead of by BPE.

    Like transformers' GGUF converter: a token written outside the byte alphabet is a llama.cpp
    mislabel and stays ordinary text; the ids the file names as BOS/EOS/UNK/PAD are special
    whatever their type, as they are in transformers.
    """
    special = frozenset(
        i for i in ids_of_type(token_types, CONTROL) | named if tokens[i] == respelled[i]
    )
    user_defined = frozenset(
        i
        for i in ids_of_type(token_types, USER_DEFINED)
        if i not in special and tokens[i] == respelled[i]
    )
    return special, user_defined


def _build_backend(
    vocab_tokens: Sequence[str],
    merges: list[tuple[str, str]],
    splitting: _Splitting,
    tokens: Sequence[str],
    special: frozenset[int],
    user_defined: frozenset[int],
) -> BackendTokenizer:
    vocab = dict(zip(vocab_tokens, range(len(vocab_tokens)), strict=True))
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=splitting.ignore_merges,
    )
    backend = BackendTokenizer(bpe)
    if splitting.nfc:
        backend.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=splitting.regex is None)
    steps: list[pre_tokenizers.PreTokenizer] = []
    if splitting.individual_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if splitting.regex is not None:
        steps.append(pre_tokenizers.Split(Regex(splitting.regex), behavior="isolated"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([*steps, byte_level]) if steps else byte_level
    backend.decoder = decoders.ByteLevel()
    # normalized=False: match the token's text as written, before the byte-level respelling.
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in sorted(special)]
    )
    if user_defined:
        backend.add_tokens(
            [AddedToken(tokens[i], special=False, normalized=False) for i in sorted(user_defined)]
        )
    return backend


def _in_alphabet_all(tokens: Sequence[str]) -> Sequence[str]:
    """Every token spelled in the byte alphabet: `tokens` itself when all of them already are,
    as in every byte-level vocabulary but a few mislabelled ones (one set of the characters of
    the whole vocabulary instead of a check per token: 5 ms instead of 25 for 49k tokens)."""
    alphabet = _byte_alphabet()
    outside = set("".join(tokens)).difference(alphabet)
    if not outside:
        return tokens
    return [
        token if outside.isdisjoint(token) else _in_alphabet(token, alphabet) for token in tokens
    ]


def _in_alphabet(token: str, alphabet: Mapping[str, int]) -> str:
    """The token spelled in the byte alphabet, as the merges expect (almost always unchanged)."""
    if all(ch in alphabet for ch in token):
        return token
    spelling = {b: ch for ch, b in alphabet.items()}
    return "".join(spelling[b] for b in token.encode("utf-8"))


@cache
def _alphabet_to_latin1() -> dict[int, int]:
    """A `str.translate` table: each alphabet character to the character of its byte's value,
    every other character below 256 to one that Latin-1 cannot encode (U+FFFF)."""
    table = dict.fromkeys(range(256), 0xFFFF)
    table.update({ord(ch): b for ch, b in _byte_alphabet().items()})
    return table


def _token_bytes(token: str) -> bytes:
    # Same rule as the ByteLevel decoder in `tokenizers`: a token spelled in the byte alphabet
    # maps back char by char; anything else is its own UTF-8. Translating to Latin-1 does the
    # char-by-char map in C (a first-time token costs well under a microsecond while
    # streaming): a character outside the alphabet is above U+00FF after it and fails encoding.
    try:
        return token.translate(_alphabet_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


def _parse_merges(merges: Sequence[str], source: str) -> list[tuple[str, str]]:
    pairs = [tuple(merge.split(" ")) for merge in merges]
    # Checked in bulk (C loops over ~50k pairs); the entry is looked for only if one is wrong.
    if set(map(len, pairs)) - {2} or not all(map(all, pairs)):
        for merge, pair in zip(merges, pairs, strict=True):
            if len(pair) != 2 or not pair[0] or not pair[1]:
                raise ModelFormatError(
                    f"{source}: tokenizer.ggml.merges has a malformed entry {merge!r} "
                    "(expected two tokens separated by one space)"
                )
    return cast("list[tuple[str, str]]", pairs)
