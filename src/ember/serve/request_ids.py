"""`x-request-id` on every response: the client's own when it sent a sane one, else a new one.

Outermost in the app, so errors of every layer below carry it, and so does the 500 for an
exception that escaped them all; the HTTP protocol's own refusals (not HTTP, headers too large,
too many connections), answered before any request exists, carry a new one (`new_request_id`).
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.serve.api_errors import InternalServerError, api_error_response

logger = logging.getLogger("ember.serve")

HEADER = b"x-request-id"
# What is echoed back: short, and only characters that cannot forge a header or a log record.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def new_request_id() -> bytes:
    return uuid.uuid4().hex.encode()


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = _client_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id)]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        except Exception:
            if started:
                raise  # the server closes the connection: the answer cannot be taken back
            logger.exception(
                "unexpected error serving %s %s", scope["method"], ascii(scope["path"])
            )
            error = InternalServerError(
                "the server failed to handle this request; see the server log"
            )
            await api_error_response(error)(scope, receive, send_with_id)


def _client_id(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value if _SANE.fullmatch(value) else None
    return None
