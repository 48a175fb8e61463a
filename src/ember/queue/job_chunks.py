"""A streamed job's chunks on their way from the worker running it to the client's gateway.

Core NATS, not JetStream: a chunk is worth something only to a gateway listening now, and
stored per chunk it would cost a file-store write for every chunk of every stream (thousands a
second on a GPU) and a purge per job. What core NATS may lose (a message dropped while a
connection reconnects, or sent before the gateway subscribed) the stored result replaces: the
worker stores the whole stream's transcript before it acknowledges the job, and a gateway
relays from that transcript what it did not get live. So chunks are at most once, the result
exactly once, and a client's stream is complete either way.

Each message holds one or more whole SSE events and says which delivery of the job made them
(`attempt`, the job's count of deliveries) and the index of its first event within that
delivery's stream (`first`): a gateway sees a gap, a repeat, or a redelivered job that starts
its stream over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from ember.queue.job import Job
from ember.queue.layout import chunk_subject

try:
    import nats.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
except ImportError:  # pragma: no cover: job_store.py raises the error that says what to install
    pass

logger = logging.getLogger("ember.queue")

ATTEMPT_HEADER = "Ember-Attempt"
FIRST_EVENT_HEADER = "Ember-First-Event"
# Messages a feed holds for a slow gateway: a stream's chunks come at most every
# --stream-interval, so this is many seconds of one stream; past it the feed drops the newest
# and the gateway fills the gap from the stored transcript.
_FEED_BOUND = 4096


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    attempt: int  # the job's delivery that made these events (Job.attempts while it ran)
    first: int  # the index of the first event here within that delivery's stream
    data: bytes  # whole SSE events, each ending with a blank line


@dataclass(frozen=True, slots=True)
class FeedEnd:
    """The job turned final (None: it was deleted); nothing after it matters."""

    job: Job | None


class ChunkFeed:
    """The chunks of one job, as they arrive, and its end; open it before the job is
    submitted, so that none is published before the subscription exists."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.dropped = 0  # messages that did not fit in the feed, or were malformed
        self._messages: asyncio.Queue[ChunkMessage | FeedEnd] = asyncio.Queue()
        self._subscription: Subscription | None = None

    async def open(self, client: Client) -> ChunkFeed:
        self._subscription = await client.subscribe(chunk_subject(self.job_id), cb=self._on)
        # Once the server has the subscription, nothing a worker publishes later is missed.
        await client.flush()
        return self

    async def _on(self, message: Msg) -> None:
        headers = message.headers or {}
        try:
            chunk = ChunkMessage(
                int(headers[ATTEMPT_HEADER]), int(headers[FIRST_EVENT_HEADER]), message.data
            )
        except (KeyError, ValueError):
            self.dropped += 1
            return
        if self._messages.qsize() >= _FEED_BOUND:
            self.dropped += 1
            return
        self._messages.put_nowait(chunk)

    def end(self, job: Job | None) -> None:
        """The job is final (`JobQueue.when_final`'s callback): wakes the reader."""
        self._messages.put_nowait(FeedEnd(job))

    async def next(self) -> ChunkMessage | FeedEnd:
        return await self._messages.get()

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()


async def publish_chunk(client: Client, job_id: str, attempt: int, first: int, data: bytes) -> bool:
    """Sends one message of whole events; False when it could not be sent (the connection is
    away), which costs the gateway only liveness: it relays the rest from the stored result."""
    headers = {ATTEMPT_HEADER: str(attempt), FIRST_EVENT_HEADER: str(first)}
    try:
        await client.publish(chunk_subject(job_id), data, headers=headers)
    except nats.errors.Error as error:
        logger.debug("job %s: chunk %d not published: %r", job_id, first, error)
        return False
    return True
