"""`ember gateway`'s `"stream": true`: a job whose chunks are relayed as `ember serve` streams them.

The job's chunk feed is opened before the job is submitted, then the response waits for the
first of: a chunk (the worker's engine has started it: the stream begins, 200), or the job's
final state (completed: the stored stream is sent whole; failed, cancelled or expired: the
error as `ember serve` would answer it before a stream begins). From then on the relay
(`chunk_relay.py`) sends each delivery's events in order; when the job completes, what was not
received live comes from the stored transcript, then `[DONE]`.

- The client disconnects, or the deadline (`--request-timeout`) passes: the job is cancelled
  (a worker running it stops at its next heartbeat); a deadline ends the stream with a 504
  error event, as `ember serve` does.
- The worker dies: the job is delivered again after the ack wait. If nothing was sent yet the
  new delivery's stream is relayed as if it were the first; if the stream had begun it cannot
  start over, so it ends with an error event (`stream_interrupted`) and the job is cancelled.
- A final state this gateway missed (NATS away at that moment) is found by reading the job
  after `IDLE_CHECK_SECONDS` without news.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ember.queue.job import Job, JobStatus
from ember.queue.job_chunks import ChunkFeed, ChunkMessage, FeedEnd
from ember.serve.api_errors import (
    APIError,
    ClientClosedRequestError,
    DeadlineExceededError,
    InternalServerError,
    JobStreamInterruptedError,
)
from ember.serve.async_routes import JobSubmitter, reached
from ember.serve.chunk_relay import ChunkRelay, StreamInterruptedError
from ember.serve.event_stream import EventStreamResponse, disconnect_watch
from ember.serve.openai_responses import DONE, error_event
from ember.serve.stream_transcript import stored_events

logger = logging.getLogger("ember.serve")

# Seconds without a chunk or a final state before the job's state is read (a missed update).
IDLE_CHECK_SECONDS = 5.0


class JobStream:
    """One streamed job: its feed, its relay, and the time it must end by."""

    def __init__(
        self,
        jobs: JobSubmitter,
        job: Job,
        feed: ChunkFeed,
        deadline: float | None,
        job_error: Callable[[Job], APIError],
    ) -> None:
        self._jobs = jobs
        self.job = job
        self._feed = feed
        self._deadline = deadline  # on the loop's clock; None: none
        self._job_error = job_error
        self._relay = ChunkRelay()
        self._ended = False  # the job reached a final state, or this stream gave it up

    async def first(self, request: Request, timeout: float | None) -> Response:
        """Waits for the stream to begin, or for the job to end first (its error raised)."""
        gone = asyncio.Event()
        async with disconnect_watch(request, gone.set):
            while True:
                item = await self._next(gone)
                if item is None:
                    await self._give_up()
                    if gone.is_set():
                        raise ClientClosedRequestError("the client closed the connection")
                    raise DeadlineExceededError(
                        f"job {self.job.id} did not start within {timeout:g} s "
                        "(--request-timeout); it was cancelled"
                    )
                if isinstance(item, ChunkMessage):
                    try:
                        data = self._relay.on_chunk(item)
                    except StreamInterruptedError:  # cannot happen before anything is sent
                        raise InternalServerError("a stream restarted before it began") from None
                    if data:
                        break
                    continue
                if item.status is not JobStatus.COMPLETED:
                    self._ended = True
                    await self._feed.close()
                    raise self._job_error(item)
                data = await self._completed(item)
                break
        headers = {"x-ember-job-id": self.job.id}
        response = EventStreamResponse(self._events(data), self._disconnected)
        response.headers.update(headers)
        return response

    async def _events(self, first: bytes) -> AsyncGenerator[bytes, None]:
        try:
            yield first
            while not self._ended:
                try:
                    data = await self._step()
                except StreamInterruptedError as interrupted:
                    await self._give_up()
                    data = error_event(JobStreamInterruptedError(str(interrupted)).body()) + DONE
                except APIError as error:  # the queue unreachable, a result unreadable
                    await self._give_up()
                    data = error_event(error.body()) + DONE
                if data:
                    yield data
        finally:
            await self._feed.close()
            if not self._ended:
                await self._give_up()

    async def _step(self) -> bytes:
        """What to send next: live events, or the end (the stored rest, an error) and [DONE]."""
        item = await self._next(None)
        if item is None:
            await self._give_up()
            late = DeadlineExceededError(
                f"the request did not finish within its deadline (job {self.job.id} was cancelled)"
            )
            return error_event(late.body()) + DONE
        if isinstance(item, ChunkMessage):
            return self._relay.on_chunk(item)
        if item.status is JobStatus.COMPLETED:
            return await self._completed(item) + DONE
        self._ended = True
        return error_event(self._job_error(item).body()) + DONE

    async def _completed(self, job: Job) -> bytes:
        """The rest of the stream from the stored transcript."""
        self._ended = True
        await self._feed.close()
        result = await self._jobs.result(job)
        if result is None:
            raise InternalServerError(f"job {job.id} completed without a stored result")
        try:
            events = stored_events(result)
        except ValueError as error:
            raise InternalServerError(f"job {job.id}: {error}") from None
        return self._relay.on_completed(job.attempts, events)

    async def _next(self, gone: asyncio.Event | None) -> ChunkMessage | Job | None:
        """The next chunk or the final job; None when the client left or the deadline passed."""
        loop = asyncio.get_running_loop()
        while True:
            left = None if self._deadline is None else self._deadline - loop.time()
            if left is not None and left <= 0:
                return None
            wait = IDLE_CHECK_SECONDS if left is None else min(left, IDLE_CHECK_SECONDS)
            waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._feed.next())}
            if gone is not None:
                waits.add(asyncio.ensure_future(gone.wait()))
            try:
                done, _ = await asyncio.wait(waits, timeout=wait,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                for pending in waits:
                    pending.cancel()
            if gone is not None and gone.is_set():
                return None
            for finished in done:
                item = finished.result()
                if isinstance(item, ChunkMessage):
                    return item
                if isinstance(item, FeedEnd):
                    # None: the job's state was deleted (its TTL): as good as expired.
                    return item.job or msgspec.structs.replace(self.job, status=JobStatus.EXPIRED)
            current = await reached(self._jobs.connection.queue.get(self.job.id))
            if current is not None and current.status.final:
                return current

    def _disconnected(self) -> None:
        task = asyncio.ensure_future(self._give_up())
        task.add_done_callback(lambda t: t.exception())

    async def _give_up(self) -> None:
        """Nobody will read the rest: the job need not run."""
        if self._ended:
            return
        self._ended = True
        with contextlib.suppress(APIError):
            self.job = await self._jobs.cancel(self.job)
