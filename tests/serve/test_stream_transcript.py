"""`StreamTranscript`: what a worker keeps of a stream, and what a client that did not ask for
usage gets (`ember serve`'s stream without include_usage, byte for byte)."""

from __future__ import annotations

import json

import pytest

from ember.engine.sequence import FinishReason
from ember.model.tokenizer import Tokenizer
from ember.serve.generation import GenerationRequest
from ember.serve.openai_responses import DONE, ChunkEncoder, ResponseIdentity
from ember.serve.stream_transcript import (
    StreamTranscript,
    result_usage,
    split_events,
    stored_events,
)


def stream(tokenizer: Tokenizer, include_usage: bool) -> list[bytes]:
    """A chat stream as `OpenAIRoutes` writes it: role, text, finish, [usage], [DONE]."""
    from ember.engine.sampling_params import SamplingParams

    identity = ResponseIdentity("chatcmpl-1", "m", 1, "fp")
    encoder = ChunkEncoder(identity, tokenizer, True, include_usage)
    request = GenerationRequest("chatcmpl-1", None)
    choice = request.add_choice([1, 2, 3], SamplingParams(max_tokens=2), tokenizer)
    ids = tokenizer.encode("hi there", add_special_tokens=False)[:2]
    choice.accept(ids, None, FinishReason.LENGTH)
    delta = choice.take()
    assert delta is not None
    events = [encoder.role(0), encoder.delta(choice, delta)]
    if include_usage:
        events.append(encoder.usage(request))
    return [*events, DONE]


@pytest.fixture
def tokenizer(tiny_model) -> Tokenizer:  # type: ignore[no-untyped-def]
    tokenizer: Tokenizer = tiny_model.tokenizer
    return tokenizer


def test_without_usage_the_client_gets_ember_serves_bytes(tokenizer: Tokenizer) -> None:
    transcript = StreamTranscript(client_usage=False)
    sent = [transcript.add(e) for e in stream(tokenizer, include_usage=True)]
    assert [s for s in sent if s is not None] == stream(tokenizer, include_usage=False)[:-1]
    assert transcript.done and transcript.usage is not None
    assert (transcript.usage.prompt_tokens, transcript.usage.completion_tokens) == (3, 2)
    stored = transcript.encode()
    assert stored_events(stored) == stream(tokenizer, include_usage=False)[:-1]
    assert result_usage(stored) == transcript.usage
    assert json.loads(stored)["object"] == "stream"


def test_with_usage_every_event_is_kept(tokenizer: Tokenizer) -> None:
    transcript = StreamTranscript(client_usage=True)
    events = stream(tokenizer, include_usage=True)
    assert [transcript.add(e) for e in events] == [*events[:-1], None]
    assert stored_events(transcript.encode()) == events[:-1]


def test_split_events_keeps_a_partial_one_for_later() -> None:
    whole, rest = split_events(b"data: 1\n\ndata: 2\n\ndata: 3")
    assert whole == [b"data: 1\n\n", b"data: 2\n\n"] and rest == b"data: 3"
    assert split_events(b"data: 3") == ([], b"data: 3")


def test_a_result_that_is_not_a_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="not a stored stream"):
        stored_events(b'{"object": "chat.completion", "events": []}')
    answer = b'{"object":"chat.completion","usage":{"prompt_tokens":4,"completion_tokens":2}}'
    usage = result_usage(answer)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (4, 2)
