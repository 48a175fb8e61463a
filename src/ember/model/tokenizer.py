"""The model's tokenizer, rebuilt from a GGUF's `tokenizer.ggml.*` metadata.

A GGUF carries no `tokenizer.json`: only the vocabulary, the merges, a token-type array, the
special ids and the name of the pre-tokenizer (`tokenizer.ggml.pre`). We rebuild the byte-level
BPE tokenizer those describe with the `tokenizers` library, picking the text splitting the
vocabulary was trained with, so ids match the model's own Hugging Face tokenizer.

Special tokens (BOS, `<|im_end|>` ...) are matched whole in text, except in spans the caller
marks as typed by a user: there their text is plain text, tokenized as any other, so that a
chat message cannot forge a control token (`ChatTemplate.encode` marks those spans).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import compress, repeat
from operator import eq
from typing import TYPE_CHECKING, Final, cast

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from ember.errors import InvalidRequestError, ModelFormatError

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

SUPPORTED_MODELS = ("gpt2",)

# llama.cpp's token types (`llama_token_type`); other values are treated as normal text.
_CONTROL = 3
_USER_DEFINED = 4

# Control tokens that end a turn or a document. llama.cpp stops on these too ("end of
# generation" tokens), whether or not the file names them as EOS.
_END_OF_TURN_TEXTS = frozenset(
    {
        "<|im_end|>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|return|>",
        "<|END_OF_TURN_TOKEN|>",
        "<｜end▁of▁sentence｜>",
    }
)

# Texts longer than this are tokenized in a way that lets other threads run meanwhile.
_GIL_FREE_CHARS: Final = 16_384


_END_OF_TURN_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


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
_QWEN2 = _Splitting(regex=_QWEN2_SPLIT)

# `tokenizer.ggml.pre` values, grouped as llama.cpp groups them. Golden ids from the model's own
# Hugging Face tokenizer check 'smollm' (tests/fixtures/tokenizer_golden.json); the others follow
# llama.cpp's table. An unknown name is refused rather than tokenized slightly wrong.
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
    "deepseek-r1-qwen": _QWEN2,
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


class Tokenizer:
    """Text <-> token ids for one model: `encode`, `decode`, and the special ids around them."""

    __slots__ = (
        "_added_ids",
        "_added_text",
        "_backend",
        "_pieces",
        "_plain_backend",
        "_special_ids",
        "_special_text",
        "_texts",
        "add_bos",
        "bos_id",
        "eos_id",
        "pad_id",
        "source",
        "stop_ids",
        "unk_id",
    )

    def __init__(
        self,
        *,
        backend: BackendTokenizer,
        texts: Sequence[str],
        special_ids: frozenset[int],
        added_ids: frozenset[int],
        bos_id: int | None,
        eos_id: int,
        unk_id: int | None,
        pad_id: int | None,
        stop_ids: frozenset[int],
        add_bos: bool,
        source: str,
    ) -> None:
        self._backend = backend
        self._texts = tuple(texts)
        # Filled on first use: streaming touches a few thousand distinct tokens, not 50k.
        self._pieces: list[tuple[bytes, str | None] | None] = [None] * len(self._texts)
        self._special_ids = special_ids
        self._added_ids = added_ids
        # Built on first use: only prompts with a special token's text typed in them need them.
        self._plain_backend: BackendTokenizer | None = None
        self._special_text: re.Pattern[str] | None = None
        self._added_text: re.Pattern[str] | None = None
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.unk_id = unk_id
        self.pad_id = pad_id
        self.stop_ids = stop_ids
        self.add_bos = add_bos
        self.source = source

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        return cls.from_metadata(gguf.metadata, source=str(gguf.path))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], source: str = "<metadata>") -> Tokenizer:
        """Build from decoded GGUF metadata; `ModelFormatError` naming `source` if unusable."""
        fields = _Fields(metadata, source)
        model = fields.require_str("tokenizer.ggml.model")
        if model not in SUPPORTED_MODELS:
            raise ModelFormatError(
                f"{source}: unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                f"Ember supports byte-level BPE ({', '.join(SUPPORTED_MODELS)}) only"
            )
        pre = fields.optional_str("tokenizer.ggml.pre") or "default"
        splitting = _SPLITTINGS.get(pre)
        if splitting is None:
            raise ModelFormatError(
                f"{source}: unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                f"Ember knows {', '.join(sorted(_SPLITTINGS))}"
            )
        tokens = fields.require_str_list("tokenizer.ggml.tokens")
        token_types = fields.optional_int_list("tokenizer.ggml.token_type", len(tokens))
        merges = _parse_merges(fields.require_str_list("tokenizer.ggml.merges"), source)
        bos_id = fields.optional_token_id("tokenizer.ggml.bos_token_id", len(tokens))
        eos_id = fields.optional_token_id("tokenizer.ggml.eos_token_id", len(tokens))
        if eos_id is None:
            raise ModelFormatError(f"{source}: tokenizer.ggml.eos_token_id is missing")
        unk_id = fields.optional_token_id("tokenizer.ggml.unknown_token_id", len(tokens))
        pad_id = fields.optional_token_id("tokenizer.ggml.padding_token_id", len(tokens))
        add_bos = fields.optional_bool("tokenizer.ggml.add_bos_token", default=False)

        respelled = _in_alphabet_all(tokens)
        named = {i for i in (bos_id, eos_id, unk_id, pad_id) if i is not None}
        special, user_defined = _added_token_ids(tokens, token_types, respelled, named)
        backend = _build_backend(respelled, merges, splitting, tokens, special, user_defined)
        declared = [fields.optional_token_id(key, len(tokens)) for key in _END_OF_TURN_KEYS]
        stop_ids = frozenset(
            {eos_id}
            | {i for i in declared if i is not None}
            | {i for i in special if tokens[i] in _END_OF_TURN_TEXTS}
        )
        return cls(
            backend=backend,
            texts=tokens,
            special_ids=special,
            added_ids=special | user_defined,
            bos_id=bos_id,
            eos_id=eos_id,
            unk_id=unk_id,
            pad_id=pad_id,
            stop_ids=stop_ids,
            add_bos=add_bos,
            source=source,
        )

    @property
    def vocab_size(self) -> int:
        return len(self._texts)

    @property
    def bos_text(self) -> str:
        return "" if self.bos_id is None else self._texts[self.bos_id]

    @property
    def eos_text(self) -> str:
        return self._texts[self.eos_id]

    def encode(
        self,
        text: str,
        add_special_tokens: bool = False,
        *,
        plain_spans: Sequence[tuple[int, int]] = (),
    ) -> list[int]:
        """Token ids of `text`; special-token strings in it become their single ids, except
        where one overlaps a `(start, end)` span of `plain_spans` (sorted, disjoint: text a user
        typed), which is tokenized as the plain text it is.

        `add_special_tokens` prepends BOS only where the file asks for it (`add_bos_token`).
        """
        if plain_spans:
            around = self._encode_around(text, plain_spans)
            return self._with_bos(around) if add_special_tokens else around
        if len(text) > _GIL_FREE_CHARS:
            # `tokenizers`' encode holds the GIL for the whole call, encode_batch releases it:
            # a 3 MB prompt tokenized on a worker thread stalled the server's event loop 2.5 s
            # with encode, 0.02 s with encode_batch. Short texts skip the batch's dispatch.
            return self.encode_batch([text], add_special_tokens)[0]
        ids: list[int] = self._backend.encode(text, add_special_tokens=False).ids
        return self._with_bos(ids) if add_special_tokens else ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        if add_special_tokens:
            return [self._with_bos(e.ids) for e in encodings]
        return [e.ids for e in encodings]

    @property
    def special_text(self) -> re.Pattern[str]:
        """Matches the text of any special token (the longest of those starting at a place)."""
        if self._special_text is None:
            self._special_text = _longest_first(self._texts[i] for i in self._special_ids)
        return self._special_text

    def _encode_around(self, text: str, plain_spans: Sequence[tuple[int, int]]) -> list[int]:
        """`encode` with the special tokens overlapping `plain_spans` left as text.

        Cuts `text` where the backend would (its added tokens, leftmost-longest, as its
        aho-corasick automaton matches them), keeps the special tokens outside the spans, and
        tokenizes the text between them with special-token matching off. With no span
        overlapping a special token the ids are `encode`'s: the backend cuts at the same places
        and runs BPE on the same pieces.
        """
        if self._added_text is None:
            self._added_text = _longest_first(self._texts[i] for i in self._added_ids)
        kept: list[int] = []
        between: list[str] = []
        start = 0
        span = 0
        for match in self._added_text.finditer(text):
            begin, end = match.span()
            while span < len(plain_spans) and plain_spans[span][1] <= begin:
                span += 1
            if span < len(plain_spans) and plain_spans[span][0] < end:
                continue
            token_id = self._backend.token_to_id(match.group())
            if token_id is None or token_id not in self._special_ids:
                continue  # user-defined: the plain backend matches it again
            between.append(text[start:begin])
            kept.append(token_id)
            start = end
        between.append(text[start:])
        pieces = self._encode_plain(between)
        ids = pieces[0]
        for token_id, piece in zip(kept, pieces[1:], strict=True):
            ids.append(token_id)
            ids.extend(piece)
        return ids

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids with special tokens matched as text (user-defined ones still whole)."""
        backend = self._plain_backend
        if backend is None:
            # A copy (0.1 s, once): the flag is the backend's state, and other threads encode
            # with the first one meanwhile.
            backend = BackendTokenizer.from_str(self._backend.to_str())
            backend.encode_special_tokens = True
            self._plain_backend = backend
        if sum(map(len, texts)) > _GIL_FREE_CHARS:  # see `encode`
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [backend.encode(t, add_special_tokens=False).ids for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self._check_ids(ids)
        text: str = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def token_text(self, token_id: int) -> str:
        """One token's text on its own; a piece of a multi-byte character shows as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (for special tokens, their text as UTF-8)."""
        return self.token_piece(token_id)[0]

    def token_piece(self, token_id: int) -> tuple[bytes, str | None]:
        """A token's bytes, and their text when they are whole UTF-8 characters (else None:
        the token holds part of a character, or bytes that are not UTF-8)."""
        if not 0 <= token_id < len(self._pieces):
            self._check_id(token_id)
        piece = self._pieces[token_id]
        if piece is None:
            text = self._texts[token_id]
            # Added tokens decode verbatim, the others through the byte alphabet.
            data = text.encode("utf-8") if token_id in self._added_ids else _token_bytes(text)
            try:
                piece = (data, data.decode("utf-8"))
            except UnicodeDecodeError:
                piece = (data, None)
            self._pieces[token_id] = piece
        return piece

    def is_special(self, token_id: int) -> bool:
        """Control tokens (BOS, EOS, `<|im_end|>` ...): never split, skippable on decode."""
        return token_id in self._special_ids

    @property
    def added_ids(self) -> frozenset[int]:
        """The ids `is_added` is true of."""
        return self._added_ids

    def is_added(self, token_id: int) -> bool:
        """Special or user-defined tokens: matched whole in text and decoded as their own text,
        which ends any pending run of bytes (decoding flushes a partial character there)."""
        return token_id in self._added_ids

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.add_bos and self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._texts):
            raise InvalidRequestError(
                f"token id {token_id} is outside the vocabulary [0, {len(self._texts)})"
            )

    def _check_ids(self, ids: Sequence[int]) -> None:
        size = len(self._texts)
        for token_id in ids:
            if not 0 <= token_id < size:
                raise InvalidRequestError(
                    f"token id {token_id} is outside the vocabulary [0, {size})"
                )


def _added_token_ids(
    tokens: Sequence[str], token_types: Sequence[int], respelled: Sequence[str], named: set[int]
) -> tuple[frozenset[int], frozenset[int]]:
    """(special, user-defined) token ids: the ones matched whole in text instead of by BPE.

    Like transformers' GGUF converter: a token written outside the byte alphabet is a llama.cpp
    mislabel and stays ordinary text; the ids the file names as BOS/EOS/UNK/PAD are special
    whatever their type, as they are in transformers.
    """
    special = frozenset(
        i for i in _ids_of_type(token_types, _CONTROL) | named if tokens[i] == respelled[i]
    )
    user_defined = frozenset(
        i
        for i in _ids_of_type(token_types, _USER_DEFINED)
        if i not in special and tokens[i] == respelled[i]
    )
    return special, user_defined


def _longest_first(texts: Iterable[str]) -> re.Pattern[str]:
    """One pattern for all `texts`: re tries alternatives in order, so at the leftmost place
    where any matches, the longest wins (a pattern that never matches for none)."""
    ordered = sorted({text for text in texts if text}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)) or "(?!)")


def _ids_of_type(token_types: Sequence[int], kind: int) -> set[int]:
    # compress/map run the scan over ~50k types in C: a tenth of an enumerate() loop's time.
    return set(compress(range(len(token_types)), map(eq, token_types, repeat(kind))))


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


class _Fields:
    """Typed reads of the tokenizer keys, each failure a `ModelFormatError` naming the key."""

    __slots__ = ("_metadata", "_source")

    def __init__(self, metadata: Mapping[str, object], source: str) -> None:
        self._metadata = metadata
        self._source = source

    def _fail(self, key: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self._source}: {key} {problem}")

    def require_str(self, key: str) -> str:
        value = self._metadata.get(key)
        if value is None:
            raise self._fail(key, "is missing")
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, not {type(value).__name__}")
        return value

    def optional_str(self, key: str) -> str | None:
        return None if self._metadata.get(key) is None else self.require_str(key)

    def optional_bool(self, key: str, default: bool) -> bool:
        value = self._metadata.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, f"must be a boolean, not {type(value).__name__}")
        return value

    def require_str_list(self, key: str) -> list[str]:
        value = self._metadata.get(key)
        if value is None:
            raise self._fail(key, "is missing")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise self._fail(key, "must be an array of strings")
        if not value:
            raise self._fail(key, "is empty")
        if not set(map(type, value)) <= {str}:
            raise self._fail(key, "must be an array of strings")
        return list(value)

    def optional_int_list(self, key: str, length: int) -> list[int]:
        """The array, or all zeros (no type information) when absent."""
        value = self._metadata.get(key)
        if value is None:
            return [0] * length
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise self._fail(key, "must be an array of integers")
        if len(value) != length:
            raise self._fail(key, f"has {len(value)} entries for {length} tokens")
        if not set(map(type, value)) <= {int}:
            raise self._fail(key, "must be an array of integers")
        return list(value)

    def optional_token_id(self, key: str, vocab_size: int) -> int | None:
        value = self._metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(key, f"must be an integer, not {type(value).__name__}")
        if not 0 <= value < vocab_size:
            raise self._fail(key, f"is {value}, outside the vocabulary of {vocab_size} tokens")
        return value
