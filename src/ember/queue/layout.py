"""JetStream names and settings, in one place (gateways, workers and tests read them here)."""

from __future__ import annotations

from dataclasses import dataclass

STREAM = "EMBER_JOBS"  # work-queue stream: one message per queued job
SUBJECT_PREFIX = "ember.jobs"  # a job's subject: f"{SUBJECT_PREFIX}.{job_id}"
CONSUMER = "ember-workers"  # the durable pull consumer every worker shares
STATE_BUCKET = "EMBER_JOB_STATE"  # key-value: job id -> Job (JSON)
IDEMPOTENCY_BUCKET = "EMBER_JOB_KEYS"  # key-value: tenant + idempotency key -> job id
RESULTS_STORE = "EMBER_RESULTS"  # object store: results over INLINE_RESULT_BYTES


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_queued_jobs: int = 100_000  # the stream's bound: a submit past it is a 429
    job_ttl_seconds: float = 7 * 24 * 3600  # how long states and results are kept
    ack_wait_seconds: float = 30.0  # a worker heartbeats (in_progress) more often than this
    max_deliver: int = 5  # deliveries before a job is failed and leaves the stream
    retry_delay_seconds: float = 5.0  # nak delay for a retryable failure
    duplicate_window_seconds: float = 120.0  # JetStream's deduplication by message id
    inline_result_bytes: int = 512 * 1024  # larger results go to the object store


def job_subject(job_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{job_id}"


# Jobs failed after max_deliver deliveries: one message each (the job id), kept for the TTL;
# its message count is the dead-letter figure of `JobQueue.depth`.
DEAD_LETTER_STREAM = "EMBER_DEAD_LETTERS"
DEAD_LETTER_PREFIX = "ember.dead"
# The stream's metadata key holding the QueueSettings it was created with (JSON), so that a
# worker adopts the settings of whoever created the queue instead of overwriting them.
SETTINGS_METADATA_KEY = "ember.queue_settings"


def dead_letter_subject(job_id: str) -> str:
    return f"{DEAD_LETTER_PREFIX}.{job_id}"


# A streamed job's chunks, as its worker reads them from the engine server: core NATS (no
# JetStream), one subject per job; the stored result is the durable copy (`queue/job_chunks.py`).
CHUNK_PREFIX = "ember.chunks"


def chunk_subject(job_id: str) -> str:
    return f"{CHUNK_PREFIX}.{job_id}"


def job_id_of(subject: str) -> str:
    return subject[len(SUBJECT_PREFIX) + 1 :]
