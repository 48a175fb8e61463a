"""Reading a request body without letting a client make the server buffer more than the limit."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from ember.serve.api_errors import BadRequestError, PayloadTooLargeError


class ClientGoneError(Exception):
    """The client closed the connection before its body was read; nobody awaits an answer."""


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError("the Content-Length header is not a number") from None
        if size > limit:
            raise _too_large(size, limit)
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(received, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError() from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size} bytes or more; this server accepts at most {limit} "
        "(--max-body-bytes)"
    )
