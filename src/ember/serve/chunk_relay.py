"""Which events of a streamed job a gateway sends its client: live chunks, then the stored rest.

Live chunks (`queue/job_chunks.py`) come at most once and may come late, twice (never from the
same delivery, but a gateway that reads a transcript has them), or from a second delivery of
the job after its first worker died. The relay keeps one delivery's events in order and counts
them; what it did not get live it takes from the stored transcript when the job completes,
which holds the same events of the same delivery. A second delivery can take over only while
the client has been sent nothing: a stream that has begun cannot start again (its id, its
text so far), so then the relay says the stream was interrupted.
"""

from __future__ import annotations

from ember.queue.job_chunks import ChunkMessage
from ember.serve.stream_transcript import split_events


class StreamInterruptedError(Exception):
    """The job was delivered again after part of its stream reached the client."""

    def __init__(self, sent: int, attempt: int, new_attempt: int) -> None:
        super().__init__(
            f"the worker running this stream stopped after {sent} chunks (delivery {attempt}) "
            f"and the job was delivered again (delivery {new_attempt}), whose stream starts "
            "over: retry the request"
        )


class ChunkRelay:
    def __init__(self) -> None:
        self.attempt: int | None = None  # the delivery whose events the client gets
        self.sent = 0  # events of it sent to the client
        self.gap = False  # a live chunk was missed: the rest comes from the transcript

    @property
    def started(self) -> bool:
        return self.sent > 0

    def on_chunk(self, chunk: ChunkMessage) -> bytes:
        """The bytes to send the client now (maybe none)."""
        if self.attempt is None or (chunk.attempt > self.attempt and not self.started):
            self.attempt, self.gap = chunk.attempt, False
        elif chunk.attempt < self.attempt:
            return b""  # an earlier delivery's worker, still running or late
        elif chunk.attempt > self.attempt:
            raise StreamInterruptedError(self.sent, self.attempt, chunk.attempt)
        if self.gap or chunk.first > self.sent:
            self.gap = True
            return b""
        events, _ = split_events(chunk.data)
        fresh = events[self.sent - chunk.first :]
        self.sent += len(fresh)
        return b"".join(fresh)

    def on_completed(self, attempt: int, events: list[bytes]) -> bytes:
        """The rest of the stream from its transcript, stored by delivery `attempt`."""
        if self.started and attempt != self.attempt:
            assert self.attempt is not None
            raise StreamInterruptedError(self.sent, self.attempt, attempt)
        fresh = events[self.sent :]
        self.attempt, self.sent = attempt, len(events)
        return b"".join(fresh)
