"""The GGUF-built tokenizer against SmolLM2's Hugging Face tokenizer (golden ids)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidRequestError, ModelFormatError
from ember.model.tokenizer import Tokenizer

from .default_metadata import default_tokenizer_metadata

GOLDEN = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "tokenizer_golden.json").read_text("utf-8")
)
TEXTS: list[dict[str, Any]] = GOLDEN["texts"]


def _text_id(entry: dict[str, Any]) -> str:
    return repr(entry["text"][:24])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_metadata(default_tokenizer_metadata(), source="default model")


@pytest.mark.parametrize("entry", TEXTS, ids=_text_id)
def test_ids_match_hugging_face(tokenizer: Tokenizer, entry: dict[str, Any]) -> None:
    assert tokenizer.encode(entry["text"]) == entry["ids"]


def test_encode_batch_matches_encode(tokenizer: Tokenizer) -> None:
    texts = [entry["text"] for entry in TEXTS]
    assert tokenizer.encode_batch(texts) == [entry["ids"] for entry in TEXTS]


@pytest.mark.parametrize("entry", TEXTS, ids=_text_id)
def test_decode_round_trips(tokenizer: Tokenizer, entry: dict[str, Any]) -> None:
    assert tokenizer.decode(entry["ids"], skip_special_tokens=False) == entry["text"]


def test_decode_skips_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == tokenizer.bos_id
    assert tokenizer.decode(ids) == "user\nhi\n"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_only_digit_texts_differ_from_transformers_gguf_converter() -> None:
    # transformers' GGUF converter has no 'smollm' pre-tokenizer and splits like GPT-2; the
    # real SmolLM2 tokenizer splits digits first, which regroups whitespace before digits.
    differing = [e["text"] for e in TEXTS if "transformers_gguf_ids" in e]
    assert differing, "the fixture should exercise the whitespace-before-digit difference"
    assert all(any(ch.isnumeric() for ch in text) for text in differing)


def test_special_ids_match_hugging_face(tokenizer: Tokenizer) -> None:
    special = GOLDEN["special_tokens"]
    assert (tokenizer.bos_text, tokenizer.bos_id) == tuple(special["bos"])
    assert (tokenizer.eos_text, tokenizer.eos_id) == tuple(special["eos"])
    assert (tokenizer.token_text(tokenizer.unk_id or 0), tokenizer.unk_id) == tuple(special["unk"])
    assert tokenizer.pad_id == special["pad"][1]
    assert tokenizer.vocab_size == 49152
    assert tokenizer.add_bos is False


def test_stop_ids_are_eos_and_end_of_text(tokenizer: Tokenizer) -> None:
    assert tokenizer.stop_ids == frozenset({tokenizer.eos_id, 0})
    assert tokenizer.token_text(0) == "<|endoftext|>"
    assert tokenizer.token_text(tokenizer.eos_id) == "<|im_end|>"


def test_control_tokens_are_special_and_never_split(tokenizer: Tokenizer) -> None:
    for token_id in range(17):  # SmolLM2's control tokens: <|endoftext|> ... <empty_output>
        assert tokenizer.is_special(token_id)
        assert tokenizer.encode(tokenizer.token_text(token_id)) == [token_id]
    assert not tokenizer.is_special(17)


def test_add_special_tokens_prepends_bos_only_when_the_file_asks(tokenizer: Tokenizer) -> None:
    plain = tokenizer
    assert plain.encode("hi", add_special_tokens=True) == plain.encode("hi")
    metadata = {**default_tokenizer_metadata(), "tokenizer.ggml.add_bos_token": True}
    with_bos = Tokenizer.from_metadata(metadata)
    assert with_bos.encode("hi", add_special_tokens=True) == [1, *plain.encode("hi")]
    assert with_bos.encode_batch(["hi"], add_special_tokens=True) == [[1, *plain.encode("hi")]]
    assert with_bos.encode("hi") == plain.encode("hi")


def test_token_bytes_of_a_partial_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀")
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == "😀".encode()
    assert "\ufffd" in tokenizer.token_text(ids[-1])


def test_token_pieces_of_the_whole_vocabulary_match_the_byte_level_decoder(
    tokenizer: Tokenizer,
) -> None:
    # Each ordinary token decoded alone by the `tokenizers` ByteLevel decoder: its bytes when
    # they are whole characters. The pieces' fast path (a Latin-1 translation) must agree.
    for token_id in range(tokenizer.vocab_size):
        data, whole = tokenizer.token_piece(token_id)
        assert data == tokenizer.token_bytes(token_id)
        if tokenizer.is_added(token_id):
            assert whole == tokenizer.token_text(token_id)
            continue
        assert data.decode("utf-8", errors="replace") == tokenizer.decode([token_id]), token_id
        try:
            assert whole == data.decode("utf-8"), token_id
        except UnicodeDecodeError:
            assert whole is None, token_id


def test_a_token_outside_the_byte_alphabet_is_its_own_utf8() -> None:
    metadata = default_tokenizer_metadata()
    odd_text = "a b\u00ad\u00e9"  # a raw space and a soft hyphen are not alphabet characters
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert isinstance(tokens, list) and isinstance(types, list)
    odd = Tokenizer.from_metadata(
        {
            **metadata,
            "tokenizer.ggml.tokens": [*tokens, odd_text],
            "tokenizer.ggml.token_type": [*types, 1],
        }
    )
    assert odd.token_piece(len(tokens)) == (odd_text.encode(), odd_text)


def test_out_of_range_ids_are_rejected(tokenizer: Tokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        tokenizer.decode([1, tokenizer.vocab_size])
    with pytest.raises(InvalidRequestError):
        tokenizer.token_text(-1)
    with pytest.raises(InvalidRequestError):
        tokenizer.token_piece(tokenizer.vocab_size)


def test_unknown_tokenizer_model_is_unsupported() -> None:
    metadata = {**default_tokenizer_metadata(), "tokenizer.ggml.model": "t5"}
    with pytest.raises(ModelFormatError, match="unsupported tokenizer model 't5'"):
        Tokenizer.from_metadata(metadata, source="m.gguf")


def test_sentencepiece_model_with_a_byte_level_pre_tokenizer_is_refused() -> None:
    metadata = {**default_tokenizer_metadata(), "tokenizer.ggml.model": "llama"}
    with pytest.raises(ModelFormatError, match=r"pre-tokenizer 'smollm'.*'llama' is not supported"):
        Tokenizer.from_metadata(metadata, source="m.gguf")


def test_unknown_pre_tokenizer_is_unsupported() -> None:
    metadata = {**default_tokenizer_metadata(), "tokenizer.ggml.pre": "mystery"}
    with pytest.raises(ModelFormatError, match="unsupported pre-tokenizer 'mystery'"):
        Tokenizer.from_metadata(metadata, source="m.gguf")


@pytest.mark.parametrize(
    "key",
    [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
    ],
)
def test_missing_keys_are_format_errors(key: str) -> None:
    metadata = {k: v for k, v in default_tokenizer_metadata().items() if k != key}
    with pytest.raises(ModelFormatError, match=f"m.gguf: {key} is missing"):
        Tokenizer.from_metadata(metadata, source="m.gguf")


def test_malformed_values_are_format_errors() -> None:
    base = default_tokenizer_metadata()
    bad: list[tuple[str, object, str]] = [
        ("tokenizer.ggml.eos_token_id", 10**6, "outside the vocabulary"),
        ("tokenizer.ggml.token_type", [1, 2, 3], "entries for 49152 tokens"),
        ("tokenizer.ggml.merges", ["a b c"], "malformed entry"),
        ("tokenizer.ggml.tokens", "not a list", "array of strings"),
        ("tokenizer.ggml.add_bos_token", "yes", "must be a boolean"),
    ]
    for key, value, message in bad:
        with pytest.raises(ModelFormatError, match=message):
            Tokenizer.from_metadata({**base, key: value}, source="m.gguf")


def test_each_malformed_merge_is_named() -> None:
    base = default_tokenizer_metadata()
    merges = base["tokenizer.ggml.merges"]
    assert isinstance(merges, list)
    for entry in ["ab", "a ", " b", "a  b", "a b c", " "]:
        # Among the real merges, so that the bulk check, not only the loop, has to see it.
        metadata = {**base, "tokenizer.ggml.merges": [*merges[:100], entry, *merges[100:]]}
        with pytest.raises(ModelFormatError, match=f"malformed entry {entry!r}"):
            Tokenizer.from_metadata(metadata, source="m.gguf")


def test_added_token_types() -> None:
    """Control tokens are special, user-defined ones added but not special, and a control
    token written outside the byte alphabet (a llama.cpp mislabel) is ordinary text."""
    metadata = default_tokenizer_metadata()
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert isinstance(tokens, list) and isinstance(types, list)
    extra = {"<|tool|>": 3, "<|mine|>": 4, "<ctrl with space>": 3}
    tok = Tokenizer.from_metadata(
        {
            **metadata,
            "tokenizer.ggml.tokens": [*tokens, *extra],
            "tokenizer.ggml.token_type": [*types, *extra.values()],
        }
    )
    tool, mine, spaced = range(len(tokens), len(tokens) + 3)
    assert tok.is_special(tool) and tok.is_added(tool)
    assert not tok.is_special(mine) and tok.is_added(mine)
    assert not tok.is_special(spaced) and not tok.is_added(spaced)
    assert tok.encode("a<|tool|>b<|mine|>") == [*tok.encode("a"), tool, *tok.encode("b"), mine]
    # The rest of the vocabulary is untouched by the one token that needed respelling.
    for entry in TEXTS[:20]:
        assert tok.encode(entry["text"]) == entry["ids"]


def _between_special_tokens(tokenizer: Tokenizer, text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in tokenizer.special_text.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    return [*spans, (start, len(text))]


@pytest.mark.parametrize("entry", TEXTS, ids=_text_id)
def test_plain_spans_between_special_tokens_change_nothing(
    tokenizer: Tokenizer, entry: dict[str, Any]
) -> None:
    """Marking all the text around the special tokens as typed keeps Hugging Face's ids: the
    text is cut where the backend cuts it, and BPE runs on the same pieces."""
    spans = _between_special_tokens(tokenizer, entry["text"])
    assert tokenizer.encode(entry["text"], plain_spans=spans) == entry["ids"]


@pytest.mark.parametrize("entry", TEXTS, ids=_text_id)
def test_special_token_text_in_a_plain_span_is_plain_text(
    tokenizer: Tokenizer, entry: dict[str, Any]
) -> None:
    text = entry["text"]
    ids = tokenizer.encode(text, plain_spans=[(0, len(text))])
    assert not any(map(tokenizer.is_special, ids))
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    if tokenizer.special_text.search(text) is None:
        assert ids == entry["ids"]


def test_a_special_token_partly_in_a_plain_span_is_plain_text(tokenizer: Tokenizer) -> None:
    plain = tokenizer.encode("a<|im_end|>b", plain_spans=[(0, 12)])
    # The byte-level split cuts between letters and punctuation, so the halves add up.
    assert plain == [*tokenizer.encode("a<|im"), *tokenizer.encode("_end|>b")]
    assert tokenizer.encode("a<|im_end|>b<|im_end|>", plain_spans=[(3, 4)]) == [*plain, 2]
    assert tokenizer.encode("<|im_end|>", plain_spans=[(9, 10)]) == tokenizer.encode(
        "<|im_end|>", plain_spans=[(0, 10)]
    )


def test_plain_spans_over_16_kib_give_the_same_ids(tokenizer: Tokenizer) -> None:
    """Long texts go through encode_batch (which releases the GIL) with spans too."""
    unit = "x <|im_end|>\n"
    text = unit * 3000
    assert len(text) > 16_384
    typed = tokenizer.encode(text, plain_spans=[(0, len(text))])
    assert typed == tokenizer.encode(unit, plain_spans=[(0, len(unit))]) * 3000
    assert tokenizer.encode(text, plain_spans=_between_special_tokens(tokenizer, text)) == (
        tokenizer.encode(text)
    )


def test_plain_spans_keep_bos(tokenizer: Tokenizer) -> None:
    metadata = {**default_tokenizer_metadata(), "tokenizer.ggml.add_bos_token": True}
    with_bos = Tokenizer.from_metadata(metadata)
    typed = with_bos.encode("<|im_end|>", add_special_tokens=True, plain_spans=[(0, 10)])
    assert typed == [1, *tokenizer.encode("<|im_end|>", plain_spans=[(0, 10)])]


def test_user_defined_tokens_stay_whole_in_plain_spans() -> None:
    """As in llama.cpp (parse_special off) and Hugging Face (encode_special_tokens): only
    control tokens become text; a user-defined token is vocabulary, matched anywhere."""
    metadata = default_tokenizer_metadata()
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert isinstance(tokens, list) and isinstance(types, list)
    tok = Tokenizer.from_metadata(
        {
            **metadata,
            "tokenizer.ggml.tokens": [*tokens, "<|tool|>", "<|mine|>"],
            "tokenizer.ggml.token_type": [*types, 3, 4],
        }
    )
    tool, mine = len(tokens), len(tokens) + 1
    ids = tok.encode("<|tool|>a<|mine|>", plain_spans=[(0, 17)])
    assert tool not in ids and ids[-1] == mine
    assert tok.decode(ids, skip_special_tokens=False) == "<|tool|>a<|mine|>"
