"""Reading a request body without letting a client make the server buffer more than the limit,
or hold a handler by stalling.

A body over the limit is refused (413) as soon as its size is known; the connection then drops
the rest of it as it arrives (`http_protocol`), so the client reads its 413 after sending
rather than a reset while sending.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from ember.serve.api_errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError


class ClientGoneError(Exception):
    """The client closed the connection before its body was read; nobody awaits an answer."""


async def read_body(request: Request, limit: int, read_timeout: float) -> bytes:
    """The body, at most `limit` bytes, with no pause longer than `read_timeout` seconds."""
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
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(read_timeout) as pause:
            async for chunk in request.stream():
                pause.reschedule(loop.time() + read_timeout)
                received += len(chunk)
                if received > limit:
                    raise _too_large(received, limit)
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGoneError() from None
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body stopped arriving for {read_timeout:g} s (--read-timeout) after "
            f"{received} bytes"
        ) from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size} bytes or more; this server accepts at most {limit} "
        "(--max-body-bytes)"
    )
