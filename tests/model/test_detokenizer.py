"""Streaming detokenization: whole characters only, and the same text as a one-shot decode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ember.model.detokenizer import IncrementalDetokenizer
from ember.model.tokenizer import Tokenizer

from .default_metadata import default_tokenizer_metadata

GOLDEN = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "tokenizer_golden.json").read_text("utf-8")
)
TEXTS: list[str] = [entry["text"] for entry in GOLDEN["texts"]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_metadata(default_tokenizer_metadata(), source="default model")


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas = [detokenizer.push(token_id) for token_id in ids]
    deltas.append(detokenizer.flush())
    assert detokenizer.text == "".join(deltas)
    return deltas


def _is_clean(text: str) -> bool:
    return "\ufffd" not in text and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_stream_of_every_fixture_text_equals_full_decode(
    tokenizer: Tokenizer, skip_special_tokens: bool
) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text)
        deltas = _stream(tokenizer, ids, skip_special_tokens)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert all(_is_clean(delta) for delta in deltas), text


def test_emoji_comes_out_whole_once_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a😀")
    assert len(ids) == 4  # 'a' then the emoji's four bytes over three tokens
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert [detokenizer.push(token_id) for token_id in ids] == ["a", "", "", "😀"]
    assert detokenizer.flush() == ""


def test_zwj_sequence_streams_as_complete_characters(tokenizer: Tokenizer) -> None:
    family = "👨‍👩‍👧‍👦"
    deltas = _stream(tokenizer, tokenizer.encode(family), skip_special_tokens=True)
    assert "".join(deltas) == family
    assert [d for d in deltas if d] == list(family)  # each code point as soon as it is whole


def test_flush_reports_an_unfinished_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok😀")[:-1]
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert "".join(detokenizer.push(token_id) for token_id in ids) == "ok"
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.text == tokenizer.decode(ids) == "ok\ufffd"


def test_special_tokens_end_a_partial_character_unless_skipped(tokenizer: Tokenizer) -> None:
    emoji = tokenizer.encode("😀")
    ids = [emoji[0], tokenizer.eos_id, *emoji[1:]]
    for skip in (True, False):
        assert "".join(_stream(tokenizer, ids, skip)) == tokenizer.decode(ids, skip)
    assert "".join(_stream(tokenizer, ids, skip_special_tokens=True)) == "😀"


def test_random_ids_match_decode_including_invalid_utf8(tokenizer: Tokenizer) -> None:
    # Random ids make broken byte sequences that a model can emit; the replacement characters
    # must land exactly where the one-shot decode puts them.
    rng = random.Random(1234)
    byte_heavy = [i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i)[-1] >= 0x80]
    for _ in range(200):
        ids = [
            rng.choice(byte_heavy) if rng.random() < 0.6 else rng.randrange(tokenizer.vocab_size)
            for _ in range(rng.randrange(1, 24))
        ]
        for skip in (True, False):
            assert "".join(_stream(tokenizer, ids, skip)) == tokenizer.decode(ids, skip), ids
