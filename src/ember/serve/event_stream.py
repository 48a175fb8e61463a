"""Server-sent events, and noticing a client that went away while we were generating for it.

A disconnect has to be noticed as it happens, not at the next write: on a slow step the next
write may be seconds away, and the sequence would hold its KV blocks all that time. So while a
response is in progress a watcher reads the ASGI receive channel for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


@contextlib.asynccontextmanager
async def disconnect_watch(
    request: Request, on_disconnect: Callable[[], None]
) -> AsyncIterator[None]:
    """While inside, `on_disconnect` runs as soon as the client closes the connection.
    Use after the body has been read."""
    watcher = asyncio.create_task(watch_disconnect(request.receive, on_disconnect))
    try:
        yield
    finally:
        watcher.cancel()


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_disconnect: Callable[[], None],
        status: int = 200,
    ) -> None:
        super().__init__(status_code=status, media_type=self.media_type)
        self.headers["Cache-Control"] = "no-cache"
        # Proxies such as nginx would otherwise buffer the whole stream.
        self.headers["X-Accel-Buffering"] = "no"
        del self.headers["content-length"]
        self._events = events
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        watcher = asyncio.create_task(watch_disconnect(receive, self._on_disconnect))
        try:
            async for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self._on_disconnect()
        finally:
            watcher.cancel()
            await self._events.aclose()
