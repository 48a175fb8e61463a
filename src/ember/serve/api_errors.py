"""Errors the HTTP API returns, each with its status and OpenAI's error shape.

Every error a client can cause or meet is one of these; the body is always
`{"error": {"message", "type", "param", "code"}}`, never a traceback.
"""

from __future__ import annotations

import json

from ember.errors import EmberError


class APIError(EmberError):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

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
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class BadRequestError(APIError):
    """400: the body is not valid JSON, a field has the wrong type or value, or it cannot run."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceededError(BadRequestError):
    code = "context_length_exceeded"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFullError(APIError):
    """429: more requests are waiting for the engine than `--max-queued-requests` allows."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ServiceUnavailableError(APIError):
    """503: no engine worker is ready (starting, restarting) or the server is draining."""

    status = 503
    type = "service_unavailable"
    code = "no_worker_ready"


class WorkerCrashedError(ServiceUnavailableError):
    """The engine worker died while it held this request; the request is lost, retry it."""

    code = "worker_crashed"


class DeadlineExceededError(APIError):
    status = 504
    type = "timeout_error"
    code = "request_timeout"


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
