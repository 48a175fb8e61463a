"""What can go wrong between Ember and its queue, each saying what to do about it."""

from __future__ import annotations

from ember.errors import EmberError


class QueueUnavailableError(EmberError):
    """The NATS server cannot be reached, or has no JetStream; `url` is the one tried."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"the job queue at {url} is unavailable: {reason}. Check that nats-server runs "
            "there with JetStream on (`nats-server -js`) and is reachable from here"
        )
        self.url = url


class QueueFullError(EmberError):
    """The stream holds `max_queued_jobs` jobs: a submit is refused (the HTTP side's 429)."""

    def __init__(self, max_queued_jobs: int) -> None:
        super().__init__(
            f"the job queue is full ({max_queued_jobs} jobs queued or running): retry later"
        )
        self.max_queued_jobs = max_queued_jobs


class IdempotencyConflictError(EmberError):
    """An idempotency key already names a job with another body (the HTTP side's 409)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"this Idempotency-Key was used for job {job_id} with a different body: send the "
            "same body to get that job, or use a new key"
        )
        self.job_id = job_id


class QueueDependencyError(EmberError):
    """nats-py, or the nats-server binary, is not installed."""


class JobTooLargeError(EmberError):
    """A job's body is over the NATS server's max_payload (the HTTP side's 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the request body is {size} bytes, over the queue's {limit}-byte message limit "
            "(the NATS server's max_payload): send a smaller body, or raise max_payload"
        )
        self.size = size
        self.limit = limit
