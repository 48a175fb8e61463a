"""The async API: `/v1/async/chat/completions`, `/v1/async/completions`, `/v1/jobs/{id}`.

A submit's body is the sync route's body, checked by the same parsers (the same 400s; never
queued when malformed) and stored as a job before it is answered: `202` with the job object
and `Location: /v1/jobs/{id}`, or `200` with the finished job when it completes within the
client's `Prefer: wait=N` (RFC 7240). `GET /v1/jobs/{id}?wait=N` long-polls, woken by the
job's key-value watch; `POST /v1/jobs/{id}/cancel` cancels it. A job belongs to its tenant:
another tenant's key gets 404 for it. `Idempotency-Key` makes a retried submit return the same
job; the same key with another body is a 409.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ember.queue.errors import (
    IdempotencyConflictError,
    JobTooLargeError,
    QueueFullError,
    QueueUnavailableError,
)
from ember.queue.job import Job, JobKind, JobStatus, new_job_id
from ember.serve.api_errors import (
    BadRequestError,
    ConflictError,
    JobQueueFullError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    quoted,
)
from ember.serve.config import MAX_JOB_WAIT_SECONDS, ServerConfig
from ember.serve.generation_runner import OFFLOAD_BYTES, check_model, run_user_work
from ember.serve.http_body import read_body
from ember.serve.job_tenant import encode_job_tenant
from ember.serve.job_tokens import JobTokens, token_bound
from ember.serve.openai_requests import parse_chat_request, parse_completion_request
from ember.serve.prompt_tokens import chat_prompt, completion_prompt_ids
from ember.serve.queue_connection import QueueConnection
from ember.serve.rate_limits import RateLimiter
from ember.serve.served_model import ServedModel
from ember.serve.tenant_gate import tenant_of
from ember.serve.tenants import Tenant

# A full queue drains at the workers' pace, which the gateway does not know: a short wait.
FULL_QUEUE_RETRY_AFTER = 5.0
# Longest Idempotency-Key taken (Stripe's bound); it is stored as part of a key-value key.
MAX_IDEMPOTENCY_KEY_CHARS = 255
_JSON = "application/json"
T = TypeVar("T")
_STREAM_REFUSAL = (
    "a job is not streamed: send 'stream': false (or leave it out), then read the result "
    "from /v1/jobs/{id}"
)


@dataclass(frozen=True, slots=True)
class CheckedJob:
    """A body the sync route's parser took, and what its submit needs to know of it."""

    body: bytes
    stream: bool
    choices_per_prompt: int  # `n`
    # Reserved from the tenant's tokens per minute (0 when it has no such limit: then the
    # prompt is not even tokenized here).
    most_tokens: int


class JobSubmitter:
    """Checks a body as its sync route would and stores it as a job of the caller's tenant,
    with the tenant's class and weight for the worker's scheduler; shared by the async routes
    and a gateway's sync routes.

    A new job costs its tenant one request of its requests per minute and reserves its tokens
    as a sync request does (429 past either), refunded for what the worker reports unused when
    it ends (`job_tokens.py`); a retried submit answered with the job it made is free."""

    def __init__(
        self,
        connection: QueueConnection,
        config: ServerConfig,
        model: ServedModel,
        limiter: RateLimiter,
    ) -> None:
        self.connection = connection
        self._config = config
        self._model = model
        self._limiter = limiter
        self._tokens = JobTokens()

    async def checked(
        self, request: Request, kind: JobKind, stream_refusal: str | None
    ) -> CheckedJob:
        """The body once the sync route's parser takes it; `stream: true` is a 400 saying
        `stream_refusal` (None: streams are taken)."""
        config = self._config
        body = await read_body(request, config.max_body_bytes, config.read_timeout)
        offload = len(body) > OFFLOAD_BYTES
        tenant = tenant_of(request.scope)
        metered = self._limiter.usage(tenant).tokens is not None
        tokenizer = self._model.tokenizer
        if kind is JobKind.CHAT:
            chat = await run_user_work(
                lambda: parse_chat_request(body, config.max_choices), offload
            )
            model, options = chat.model, chat.options
            template = self._model.chat_template
            if template is None:
                raise BadRequestError(
                    "this model has no chat template; use /v1/completions", param="messages"
                )
            check_model(self._model.name, model, tenant)
            prompts = []
            if metered:
                rendered = await run_user_work(
                    lambda: chat_prompt(chat, template, tokenizer), offload
                )
                prompts = [rendered.ids]
        else:
            completion = await run_user_work(
                lambda: parse_completion_request(body, config.max_choices), offload
            )
            model, options = completion.model, completion.options
            check_model(self._model.name, model, tenant)
            prompts = []
            if metered:
                prompts = await run_user_work(
                    lambda: completion_prompt_ids(completion, tokenizer), offload
                )
        if options.stream and stream_refusal is not None:
            raise BadRequestError(stream_refusal, param="stream")
        lengths = [len(ids) for ids in prompts]
        most = token_bound(lengths, options.n, options.max_tokens, self._model.context_length)
        return CheckedJob(body, options.stream, options.n, most)

    async def submit(
        self,
        request: Request,
        kind: JobKind,
        checked: CheckedJob,
        *,
        job_id: str | None = None,
        waited_on: bool = False,
    ) -> tuple[Job, bool]:
        """(the job, whether this call created it); the caller's `Idempotency-Key` names it.
        `job_id`: the id to give a new job (its chunk feed is open); `waited_on`: a client
        waits here for the job, which holds one of the tenant's concurrent requests till it
        ends."""
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise BadRequestError(
                f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} "
                f"characters, got {len(key)}",
                code="invalid_idempotency_key",
            )
        queue = self.connection.queue
        tenant = tenant_of(request.scope)
        job_id = job_id or new_job_id()
        reservation = self._limiter.admit(tenant, checked.most_tokens)
        held = None
        try:
            if checked.most_tokens or waited_on:
                held = await reached(
                    self._tokens.hold(queue, job_id, reservation, checked.choices_per_prompt)
                )
            job, created = await _submitted(
                queue.submit(kind, tenant.name, checked.body, idempotency_key=key,
                             job_id=job_id, streamed=checked.stream and waited_on,
                             scheduling=encode_job_tenant(tenant)),
                key,
            )  # fmt: skip
        except BaseException:
            if held is not None:
                held.cancel()
            reservation.cancel()
            raise
        if not created:
            if held is not None:
                held.cancel()
            reservation.cancel()
        elif held is None:
            reservation.settle(0)
        elif not waited_on:
            reservation.release_slot()
        return job, created

    async def owned(self, job_id: str, tenant: Tenant) -> Job:
        """The job, if it exists and is the tenant's; else 404 (the same either way, so an id
        says nothing about other tenants' jobs)."""
        job = await reached(self.connection.queue.get(job_id))
        if job is None or job.tenant != tenant.name:
            raise NotFoundError(f"no job {quoted(job_id)}", param="job_id", code="job_not_found")
        return job

    async def wait(self, job: Job, seconds: float) -> Job:
        """The job once final, or as it is after `seconds`."""
        if job.status.final or seconds <= 0:
            return job
        waited = await reached(self.connection.queue.wait(job.id, seconds))
        return job if waited is None else waited

    async def result(self, job: Job) -> bytes | None:
        if job.status is not JobStatus.COMPLETED:
            return None
        return await reached(self.connection.queue.result_bytes(job))

    async def cancel(self, job: Job) -> Job:
        if job.status.final:
            return job
        return await reached(self.connection.queue.cancel(job.id)) or job


class AsyncRoutes:
    def __init__(self, submitter: JobSubmitter) -> None:
        self._jobs = submitter

    def routes(self) -> list[Route]:
        return [
            Route("/v1/async/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/async/completions", self.completions, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self.job, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        return await self._submit(request, JobKind.CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._submit(request, JobKind.COMPLETION)

    async def _submit(self, request: Request, kind: JobKind) -> Response:
        checked = await self._jobs.checked(request, kind, _STREAM_REFUSAL)
        wait = preferred_wait(request.headers.get("prefer"))
        job, _ = await self._jobs.submit(request, kind, checked)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if wait is not None:
            job = await self._jobs.wait(job, wait)
            headers["Preference-Applied"] = f"wait={_seconds(wait)}"
        return await self._answer(job, headers)

    async def job(self, request: Request) -> Response:
        job = await self._jobs.owned(request.path_params["job_id"], tenant_of(request.scope))
        wait = _query_wait(request.query_params.get("wait"))
        if wait is not None:
            job = await self._jobs.wait(job, wait)
        return await self._answer(job, status=200)

    async def cancel(self, request: Request) -> Response:
        job = await self._jobs.owned(request.path_params["job_id"], tenant_of(request.scope))
        return await self._answer(await self._jobs.cancel(job), status=200)

    async def _answer(
        self, job: Job, headers: dict[str, str] | None = None, status: int | None = None
    ) -> Response:
        result = await self._jobs.result(job)
        if status is None:
            status = 200 if job.status.final else 202
        return Response(job_json(job, result), status_code=status, headers=headers,
                        media_type=_JSON)  # fmt: skip


def job_json(job: Job, result: bytes | None) -> bytes:
    """The job object: `result` the stored OpenAI response once completed, `error` OpenAI's
    error object once failed."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "kind": str(job.kind),
        "status": str(job.status),
        "created_at": int(job.created_at),
        "started_at": _unix(job.started_at),
        "finished_at": _unix(job.finished_at),
        "attempts": job.attempts,
    }
    if result is not None:
        body["result"] = msgspec.Raw(result)
    if job.error is not None:
        error = job.error
        body["error"] = {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    return msgspec.json.encode(body)


def preferred_wait(prefer: str | None) -> float | None:
    """The `wait` preference of a `Prefer` header (RFC 7240: comma-separated preferences,
    names case-insensitive, values maybe quoted), capped; a value that is not a number of
    seconds is ignored, as the RFC asks of preferences a server cannot honour."""
    if prefer is None:
        return None
    for preference in prefer.split(","):
        name, _, value = preference.partition(";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        return (
            min(seconds, MAX_JOB_WAIT_SECONDS) if math.isfinite(seconds) and seconds >= 0 else None
        )
    return None


def _query_wait(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise BadRequestError(
            f"'wait' must be a number of seconds >= 0 (at most {_seconds(MAX_JOB_WAIT_SECONDS)} "
            f"are waited), got {quoted(value)}",
            param="wait",
        )
    return min(seconds, MAX_JOB_WAIT_SECONDS)


async def _submitted(call: Awaitable[tuple[Job, bool]], key: str | None) -> tuple[Job, bool]:
    """`JobQueue.submit`'s answer, or the HTTP error of its refusal."""
    try:
        return await reached(call)
    except IdempotencyConflictError:
        raise ConflictError(
            f"the Idempotency-Key {quoted(key)} was used for a job with another body; "
            "send a new key for a new request",
            code="idempotency_key_reused",
        ) from None
    except QueueFullError as error:
        raise JobQueueFullError(str(error), retry_after=FULL_QUEUE_RETRY_AFTER) from None
    except JobTooLargeError as error:
        raise PayloadTooLargeError(str(error)) from None


async def reached(call: Awaitable[T]) -> T:
    """`call`'s answer; a queue that does not answer is a 503."""
    try:
        return await call
    except (QueueUnavailableError, TimeoutError, nats.errors.Error) as error:
        raise ServiceUnavailableError(
            f"the job queue cannot be reached ({error!r}); retry later", code="queue_unavailable"
        ) from None


def _unix(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def _seconds(value: float) -> str:
    return f"{value:g}"
