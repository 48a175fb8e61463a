"""The model's tokenizer, rebuilt from a GGUF's `tokenizer.ggml.*` metadata.

A GGUF carries no `tokenizer.json`: only the vocabulary, the merges or scores, a token-type
array, the special ids and the tokenizer model and pre-tokenizer names. We rebuild the
tokenizer those describe with the `tokenizers` library: byte-level BPE with the text splitting
the vocabulary was trained with (`byte_level_bpe.py`), or SentencePiece BPE
(`sentencepiece_bpe.py`), so ids match the model's own tokenizer. An unknown tokenizer model or
pre-tokenizer is refused, never tokenized slightly wrong.

Special tokens (BOS, `<|im_end|>` ...) are matched whole in text, except in spans the caller
marks as typed by a user: there their text is plain text, tokenized as any other, so that a
chat message cannot forge a control token (`ChatTemplate.encode` marks those spans).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from tokenizers import Tokenizer as BackendTokenizer

from ember.errors import InvalidRequestError, ModelFormatError
from ember.model.byte_level_bpe import byte_alphabet_tokens, byte_level_parts
from ember.model.sentencepiece_bpe import sentencepiece_parts
from ember.model.tokenizer_metadata import MetadataFields, TokenizerParts

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

_TOKENIZER_MODELS: Mapping[
    str, Callable[[MetadataFields, list[str], list[int], set[int]], TokenizerParts]
] = {
    "gpt2": byte_level_parts,
    "llama": sentencepiece_parts,
}
SUPPORTED_MODELS = tuple(_TOKENIZER_MODELS)
__all__ = ["SUPPORTED_MODELS", "Tokenizer", "byte_alphabet_tokens"]

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
        "_token_bytes",
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
        token_bytes: Callable[[str], bytes],
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
        self._token_bytes = token_bytes
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
        fields = MetadataFields(metadata, source)
        model = fields.require_str("tokenizer.ggml.model")
        build = _TOKENIZER_MODELS.get(model)
        if build is None:
            raise ModelFormatError(
                f"{source}: unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                f"Ember supports {', '.join(SUPPORTED_MODELS)}"
            )
        tokens = fields.require_str_list("tokenizer.ggml.tokens")
        token_types = fields.optional_int_list("tokenizer.ggml.token_type", len(tokens))
        bos_id = fields.optional_token_id("tokenizer.ggml.bos_token_id", len(tokens))
        eos_id = fields.optional_token_id("tokenizer.ggml.eos_token_id", len(tokens))
        if eos_id is None:
            raise ModelFormatError(f"{source}: tokenizer.ggml.eos_token_id is missing")
        unk_id = fields.optional_token_id("tokenizer.ggml.unknown_token_id", len(tokens))
        pad_id = fields.optional_token_id("tokenizer.ggml.padding_token_id", len(tokens))
        add_bos = fields.optional_bool("tokenizer.ggml.add_bos_token", default=False)

        named = {i for i in (bos_id, eos_id, unk_id, pad_id) if i is not None}
        parts = build(fields, tokens, token_types, named)
        special = parts.special_ids
        declared = [fields.optional_token_id(key, len(tokens)) for key in _END_OF_TURN_KEYS]
        stop_ids = frozenset(
            {eos_id}
            | {i for i in declared if i is not None}
            | {i for i in special if tokens[i] in _END_OF_TURN_TEXTS}
        )
        return cls(
            backend=parts.backend,
            texts=tokens,
            special_ids=special,
            added_ids=special | parts.user_defined_ids,
            token_bytes=parts.token_bytes,
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

    def to_json(self) -> str:
        """The `tokenizers` JSON of this tokenizer: a `tokenizers.Tokenizer` built from it
        encodes text (`add_special_tokens=False`) to `encode`'s ids, and decodes them alike."""
        spec: str = self._backend.to_str()
        return spec

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
            data = text.encode("utf-8") if token_id in self._added_ids else self._token_bytes(text)
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


def _longest_first(texts: Iterable[str]) -> re.Pattern[str]:
    """One pattern for all `texts`: re tries alternatives in order, so at the leftmost place
    where any matches, the longest wins (a pattern that never matches for none)."""
    ordered = sorted({text for text in texts if text}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)) or "(?!)")
