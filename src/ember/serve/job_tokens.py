"""A job's charge to its tenant's tokens per minute: reserved at submit, settled when it ends.

The same `RateLimiter` and the same `Reservation` as a sync request (`GenerationRunner.start`),
in the server that took the job: a job reserves every prompt's tokens plus its `max_tokens`
(or the context's remainder) before it is queued (429 past the tenant's limit, as sync), and
when it completes gets back what it did not use, as counted by the worker's answer (its
`usage`, a streamed job's too: `serve/stream_transcript.py`). While queued a job holds no
request slot (max_concurrent counts what runs in this server) unless a client waits on it here
(a gateway's sync request).

What the worker did not report is not refunded: a job that failed or was cancelled gets back
everything (as a sync request refused before it ran); a final state this server missed (NATS
away at that moment) leaves the reservation charged, never more than was reserved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ember.queue.job import Job, JobStatus
from ember.queue.job_store import JobQueue
from ember.serve.rate_limits import Reservation
from ember.serve.stream_transcript import result_usage

logger = logging.getLogger("ember.serve")


def token_bound(
    prompt_lengths: Sequence[int], n: int, max_tokens: int | None, context_length: int
) -> int:
    """The most tokens a request can use, by the model's context alone (a gateway has no
    engine to ask for its KV cache; an engine's limit is never larger): each of the `n`
    choices of each prompt, its prompt plus `max_tokens` or the context's remainder."""
    total = 0
    for length in prompt_lengths:
        generated = max(0, context_length - length) if max_tokens is None else max_tokens
        total += n * (length + generated)
    return total


class JobTokens:
    """The reservations of this server's jobs until each turns final."""

    def __init__(self) -> None:
        self._settling: set[asyncio.Task[None]] = set()

    async def hold(
        self, queue: JobQueue, job_id: str, reservation: Reservation, choices_per_prompt: int
    ) -> asyncio.Future[Job | None]:
        """Settles `reservation` when the job turns final; register before the submit (the
        job could finish before it returns). Cancel the future if the submit made no job."""

        def on_final(job: Job | None) -> None:
            if job is None or job.status is not JobStatus.COMPLETED:
                reservation.settle(0)
                return
            task = asyncio.create_task(self._settle(queue, job, reservation, choices_per_prompt))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

        return await queue.when_final(job_id, on_final)

    @staticmethod
    async def _settle(
        queue: JobQueue, job: Job, reservation: Reservation, choices_per_prompt: int
    ) -> None:
        try:
            result = await queue.result_bytes(job)
        except Exception as error:  # NATS away: keep the charge (at most what was reserved)
            logger.warning("job %s: its tokens were not settled: %r", job.id, error)
            reservation.settle(reservation.tokens)
            return
        usage = None if result is None else result_usage(result)
        if usage is None:
            reservation.settle(reservation.tokens)
            return
        # As a sync request counts (`GenerationRequest.used_tokens`): each choice's prompt,
        # plus every generated token; `usage` counts a prompt once however many choices.
        reservation.settle(choices_per_prompt * usage.prompt_tokens + usage.completion_tokens)
