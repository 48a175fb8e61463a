"""A job: one OpenAI request body run asynchronously, and what happened to it."""

from __future__ import annotations

import enum
import secrets
import time

import msgspec


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class JobKind(enum.StrEnum):
    CHAT = "chat.completion"  # POST /v1/chat/completions's body
    COMPLETION = "text_completion"  # POST /v1/completions's body


class JobError(msgspec.Struct, frozen=True):
    """Why a job failed, in OpenAI's error shape (`status` the HTTP status it would have had)."""

    status: int
    message: str
    type: str = "server_error"
    param: str | None = None
    code: str | None = None


class Job(msgspec.Struct, kw_only=True):
    """A job's state, as the key-value bucket stores it (JSON), under its id."""

    id: str
    kind: JobKind
    tenant: str  # the tenant that submitted it: another tenant's key gets 404 for it
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0  # deliveries to a worker so far
    created_at: float = msgspec.field(default_factory=time.time)  # Unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    body_digest: str = ""  # SHA-256 of the body: the same idempotency key with another is 409
    # The answer's JSON (an OpenAI chat.completion / text_completion object), inline when small;
    # else the name of its object in the results object store.
    result: msgspec.Raw | None = None
    result_object: str | None = None
    error: JobError | None = None
    worker: str | None = None  # who ran (or runs) it
    # Its submitter relays its chunks as the worker publishes them (`ember gateway`'s
    # `"stream": true`): the worker streams it and stores the stream's transcript.
    streamed: bool = False
    # The tenant's class and weight as the submitter wrote them (JSON, read by
    # `serve/job_tenant.py`): the worker's scheduler orders the job by them.
    scheduling: str | None = None


def new_job_id() -> str:
    """`job_` and 24 random characters (URL-safe)."""
    return "job_" + secrets.token_urlsafe(18)


class _StoredJob(Job, kw_only=True):
    # msgspec decodes a Raw field only on its own, not in a union with None: the stored form
    # reads `result` as Raw (JSON null when there is none) and `decode_job` turns null to None.
    result: msgspec.Raw = msgspec.Raw(b"null")  # type: ignore[assignment]


_NULL = b"null"
_decode_stored = msgspec.json.Decoder(_StoredJob).decode
encode_job = msgspec.json.Encoder().encode


def decode_job(data: bytes) -> Job:
    """A job from its stored JSON (the key-value bucket's value)."""
    stored = _decode_stored(data)
    fields = msgspec.structs.asdict(stored)
    if bytes(stored.result) == _NULL:
        fields["result"] = None
    return Job(**fields)
