"""`ChunkRelay`: one delivery's events in order, gaps filled from the transcript, a redelivery
taken over only before the stream began."""

from __future__ import annotations

import pytest

from ember.queue.job_chunks import ChunkMessage
from ember.serve.chunk_relay import ChunkRelay, StreamInterruptedError
from ember.serve.stream_transcript import event


def events(*names: str) -> list[bytes]:
    return [event(f'{{"n":"{name}"}}'.encode()) for name in names]


def chunk(attempt: int, first: int, *names: str) -> ChunkMessage:
    return ChunkMessage(attempt, first, b"".join(events(*names)))


def test_events_in_order_then_the_rest_from_the_transcript() -> None:
    relay = ChunkRelay()
    assert relay.on_chunk(chunk(1, 0, "a", "b")) == b"".join(events("a", "b"))
    assert relay.on_chunk(chunk(1, 2, "c")) == b"".join(events("c"))
    assert relay.on_completed(1, events("a", "b", "c", "d")) == b"".join(events("d"))


def test_a_repeat_is_sent_once_and_a_gap_waits_for_the_transcript() -> None:
    relay = ChunkRelay()
    relay.on_chunk(chunk(1, 0, "a", "b"))
    assert relay.on_chunk(chunk(1, 1, "b", "c")) == b"".join(events("c"))  # b again
    assert relay.on_chunk(chunk(1, 5, "f")) == b""  # d and e were lost
    assert relay.gap and relay.on_chunk(chunk(1, 6, "g")) == b""
    assert relay.on_completed(1, events(*"abcdefg")) == b"".join(events(*"defg"))


def test_a_redelivery_takes_over_a_stream_that_has_not_begun() -> None:
    relay = ChunkRelay()
    assert relay.on_chunk(chunk(1, 3, "d")) == b""  # the first delivery's, mid-way: a gap
    assert relay.on_chunk(chunk(2, 0, "a")) == b"".join(events("a"))
    assert relay.on_chunk(chunk(1, 4, "e")) == b""  # the old worker, still running
    assert relay.on_completed(2, events("a", "b")) == b"".join(events("b"))


def test_a_redelivery_after_the_stream_began_interrupts_it() -> None:
    relay = ChunkRelay()
    relay.on_chunk(chunk(1, 0, "a"))
    with pytest.raises(StreamInterruptedError, match=r"delivery 1.*delivery 2"):
        relay.on_chunk(chunk(2, 0, "a"))
    other = ChunkRelay()
    other.on_chunk(chunk(1, 0, "a"))
    with pytest.raises(StreamInterruptedError):
        other.on_completed(2, events("a", "b"))


def test_a_stored_stream_with_nothing_live_is_sent_whole() -> None:
    assert ChunkRelay().on_completed(3, events("a", "b")) == b"".join(events("a", "b"))
