"""Errors the HTTP API returns, each with its status and OpenAI's error shape.

Every error a client can cause or meet is one of these; the body is always
`{"error": {"message", "type", "param", "code"}}`, never a traceback.
"""

from __future__ import annotations

import json
import math

from starlette.responses import Response

from ember.errors import EmberError

# How much of a client's value an error message quotes: enough to recognise it, never a page.
QUOTED_CHARS = 100


def quoted(value: object) -> str:
    """A client's value as every error message shows it: `repr`-escaped (control characters and
    lone surrogates as escapes, so the body always encodes) and cut to ~100 characters."""
    if isinstance(value, str):
        if len(value) <= QUOTED_CHARS:
            return repr(value)
        return f"{value[:QUOTED_CHARS]!r}... ({len(value)} characters)"
    text = repr(value)
    if len(text) <= QUOTED_CHARS:
        return text
    return f"{text[:QUOTED_CHARS]}... ({len(text)} characters)"


class APIError(EmberError):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # Answered with `Connection: close`: what follows on the connection cannot be trusted to
    # start a request (a body left unread, bytes that were not HTTP).
    close_connection: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False)

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            # Rounded up: a client that waits as told is not refused again for being early.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after - 1e-9)))
        if self.close_connection:
            headers["Connection"] = "close"
        return headers


def api_error_response(error: APIError) -> Response:
    return Response(
        error.json(),
        status_code=error.status,
        headers=error.headers(),
        media_type="application/json",
    )


class BadRequestError(APIError):
    """400: the body is not valid JSON, a field has the wrong type or value, or it cannot run."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceededError(BadRequestError):
    code = "context_length_exceeded"


class InvalidHTTPError(BadRequestError):
    """400 from the HTTP layer: the bytes are not an HTTP/1.1 request."""

    code = "invalid_http"
    close_connection = True


class CrossOriginError(APIError):
    """403: a browser page of another site (its `Origin`) that `--allowed-origins` lacks."""

    status = 403
    type = "invalid_request_error"
    code = "origin_not_allowed"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeoutError(APIError):
    """408: the client took longer than `--read-timeout` to send its headers or a body part."""

    status = 408
    type = "invalid_request_error"
    code = "read_timeout"
    close_connection = True


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class MisdirectedRequestError(APIError):
    """421: the `Host` header names a host this server does not answer to (DNS rebinding)."""

    status = 421
    type = "invalid_request_error"
    code = "host_not_allowed"


class HeadersTooLargeError(APIError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    close_connection = True


class UnsupportedMediaTypeError(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFullError(APIError):
    """503: more requests are waiting for the engine than `--max-queued-requests` allows. The
    server is full, not the caller over its own limits (that is a 429)."""

    status = 503
    type = "service_unavailable"
    code = "queue_full"


class RateLimitExceededError(APIError):
    """429: the caller's tenant is over one of its limits (requests or tokens per minute,
    concurrent requests); `type` says which kind, as OpenAI's does."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        type: str,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after=retry_after)
        self.type = type


class ConflictError(APIError):
    """409: an `Idempotency-Key` already names a job submitted with another body."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class JobQueueFullError(APIError):
    """429: the job queue holds as many jobs as it may; retry after `Retry-After` seconds."""

    status = 429
    type = "requests"
    code = "job_queue_full"


class InvalidAPIKeyError(APIError):
    """401: no key, or one that is unknown or expired, while the server requires keys."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="ember"'}


class ServiceUnavailableError(APIError):
    """503: no engine worker is ready (starting, restarting) or the server is draining."""

    status = 503
    type = "service_unavailable"
    code = "no_worker_ready"


class TooManyConnectionsError(ServiceUnavailableError):
    """503: `--max-connections` are open and none is idle enough to be closed for this one."""

    code = "too_many_connections"
    close_connection = True


class ServerOverloadedError(ServiceUnavailableError):
    """503: the server, not the caller's tenant, is full: the class's queue is at its bound, a
    request waited past its class's queue timeout, or a sheddable request was shed."""

    code = "server_overloaded"


class WorkerCrashedError(ServiceUnavailableError):
    """The engine worker died while it held this request; the request is lost, retry it."""

    code = "worker_crashed"


class DeadlineExceededError(APIError):
    status = 504
    type = "timeout_error"
    code = "request_timeout"


class JobStreamInterruptedError(APIError):
    """A gateway's stream whose job was delivered again after part of it was sent."""

    status = 502
    code = "stream_interrupted"


class ClientClosedRequestError(APIError):
    """The client went away; nginx's 499, for the metrics (nobody reads this response)."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


class InternalServerError(APIError):
    """500: a bug in Ember. The message stays generic; the traceback goes to the server log."""

    status = 500
    type = "server_error"
    code = "internal_error"
