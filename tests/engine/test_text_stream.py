"""TextStream against the plain definition: the whole text re-searched for stop strings after
every token, and deltas cut from it (the way it was first written, quadratic in the length)."""

from __future__ import annotations

import random
import zlib

import pytest

from ember.engine.sampling_params import SamplingParams
from ember.engine.text_stream import TextStream
from ember.model.detokenizer import IncrementalDetokenizer
from ember.model.tokenizer import Tokenizer

from ..model.default_metadata import default_tokenizer_metadata


class ReferenceStream:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
        self.stops = params.stop
        self.include = params.include_stop_str_in_output
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def push(self, token_id: int) -> bool:
        return self._add(self.detokenizer.push(token_id))

    def finish(self) -> bool:
        return self._add(self.detokenizer.flush())

    def take_delta(self, final: bool) -> str:
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.holdback)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _add(self, delta: str) -> bool:
        search_from = max(0, len(self.text) - self.holdback)
        self.text += delta
        hits = [(self.text.find(s, search_from), i) for i, s in enumerate(self.stops)]
        found = sorted((index, i) for index, i in hits if index != -1)
        if not found:
            return False
        index, i = found[0]
        self.text = self.text[: index + (len(self.stops[i]) if self.include else 0)]
        return True


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_metadata(default_tokenizer_metadata(), source="default model")


STOPS = [
    (),
    ("\n",),
    ("the",),
    ("e t", "th", "xyz"),
    ("ing the", "g"),
    ("😀",),
    ("a", "ab"),
]


@pytest.mark.parametrize("stops", STOPS)
@pytest.mark.parametrize("include", [False, True])
def test_deltas_and_stops_match_the_reference(
    tokenizer: Tokenizer, stops: tuple[str, ...], include: bool
) -> None:
    rng = random.Random(zlib.crc32(repr((stops, include)).encode()))
    words = ["the", " cat", " sat", " on", "\n", " 😀", "ing", " e", "t", "h", "xy", "z", "ab"]
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randrange(1, 30)))
        ids = tokenizer.encode(text)
        if rng.random() < 0.3:  # a cut emoji: bytes that only finish() turns into text
            ids = ids + tokenizer.encode("😀")[:1]
        params = SamplingParams(stop=stops, include_stop_str_in_output=include)
        stream, reference = TextStream(tokenizer, params), ReferenceStream(tokenizer, params)
        for token_id in ids:
            stopped = stream.push(token_id)
            assert stopped == reference.push(token_id), text
            if stopped:
                break
            if rng.random() < 0.5:
                final = rng.random() < 0.05
                assert stream.take_delta(final) == reference.take_delta(final), text
        else:
            assert stream.finish() == reference.finish(), text
        assert stream.take_delta(final=True) == reference.take_delta(final=True), text
        assert stream.text == reference.text, text


def test_a_long_stream_holds_back_only_a_stop_prefix(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer, SamplingParams(stop=("never appears",)))
    token_id = tokenizer.encode(" word")[0]
    for _ in range(50_000):
        stream.push(token_id)
    assert len(stream.take_delta(final=False)) == 5 * 50_000 - len("never appears") + 1


def test_a_stop_string_spread_over_one_character_tokens_is_found(tokenizer: Tokenizer) -> None:
    """Each token one character, as a grammar's punctuation and keys often come: the text
    before the stop string is shorter than the stop string, and it must all be kept as the
    tail where the stop string may start."""
    text = '{"id": 7, "ok": true}'
    ids = [tokenizer.encode(ch)[0] for ch in text]
    assert tokenizer.decode(ids) == text
    params = SamplingParams(stop=('"ok"',))
    stream, reference = TextStream(tokenizer, params), ReferenceStream(tokenizer, params)
    stopped_at = None
    for i, token_id in enumerate(ids):
        stopped = stream.push(token_id)
        assert stopped == reference.push(token_id)
        if stopped:
            stopped_at = i
            break
    assert stopped_at == text.index('"ok"') + 3
    assert stream.take_delta(final=True) == '{"id": 7, '
