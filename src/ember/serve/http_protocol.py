"""uvicorn's httptools protocol with the bounds it lacks.

uvicorn (0.55) bounds neither the size nor the time of a request's headers (httptools joins a
header's pieces with `bytes +=`: a 120 MB header grew the server by 170 MB and stalled the loop
for seconds), never times out a connection that has not sent a whole request, and closes a
connection with a request body still arriving, which the client sees as a reset instead of
the answer. This subclass adds, per connection:

- a cap on the request line and headers together (`--max-header-bytes`): 431;
- a timer, while no request is being answered, from the connection's start or its previous
  response until the next request's headers are complete (`--read-timeout`): the connection
  closes, with a 408 if a request had begun;
- its place in `ConnectionBounds` (`--max-connections`): idle connections can be closed to
  make room for new ones;
- a lingering close: when the connection must close before the request's body was read, the
  answer is sent, the write side shut, and what still arrives is dropped for a moment first;
- protocol errors (not HTTP, headers too large, too many connections) as OpenAI-shaped JSON,
  with an `x-request-id`;
- on shutdown, idle connections stay open for their usual time so that a request already on
  its way gets the draining server's 503 (with `Connection: close`) rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import TimerHandle
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ember.serve.api_errors import (
    APIError,
    HeadersTooLargeError,
    InvalidHTTPError,
    RequestTimeoutError,
    TooManyConnectionsError,
)
from ember.serve.connection_bounds import ConnectionBounds
from ember.serve.request_ids import HEADER, new_request_id

logger = logging.getLogger("ember.serve")

# A lingering close ends this long after the last bytes arrive, and at the latest after the
# longest: enough for a client to finish sending a body it had started (nginx's
# lingering_timeout and lingering_time are 5 s and 30 s).
_LINGER_SECONDS = 2.0
_LONGEST_LINGER_SECONDS = 10.0
_RETRY_CONNECTION_SECONDS = 1.0


def bounded_protocol(bounds: ConnectionBounds) -> type[BoundedHTTPProtocol]:
    """The protocol class uvicorn builds per connection, sharing one server's `bounds`."""

    class ServerHTTPProtocol(BoundedHTTPProtocol):
        pass

    ServerHTTPProtocol.bounds = bounds
    return ServerHTTPProtocol


class BoundedHTTPProtocol(HttpToolsProtocol):
    bounds: ClassVar[ConnectionBounds]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # the next request's headers are not complete
        self._request_begun = False  # and some of them have arrived
        self._header_bytes = 0  # of the request begun, at least
        self._messages_read = 0
        self._discarded = 0  # body bytes after the answer went out
        self._read_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None
        self._linger_started = 0.0
        self._draining = False

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.bounds.admit(len(self.connections)):
            self.connections.discard(self)
            self._answer_and_close(
                TooManyConnectionsError(
                    "the server holds as many connections as it may (--max-connections) and "
                    "none is idle; retry shortly",
                    retry_after=_RETRY_CONNECTION_SECONDS,
                )
            )
            return
        self._update_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        self.bounds.set_idle(self, False)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            self._linger_more()
            return
        self._unset_keepalive_if_required()
        messages_read = self._messages_read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSockets here: served as a plain request, as uvicorn does
        except httptools.HttpParserError as error:
            logger.debug("not HTTP from %s: %s", self.client, error)
            reason = (
                "its line or headers could not be read"
                if isinstance(error, httptools.HttpParserCallbackError)
                else str(error)
            )
            self._answer_and_close(InvalidHTTPError(f"the request is not valid HTTP/1.1: {reason}"))
            return
        # Headers still incomplete: all of `data` was theirs, unless a request ended in it (the
        # headers that complete are measured whole in `on_headers_complete`). So the parser
        # holds at most the bound and one read of headers that never complete.
        if self._request_begun and self._messages_read == messages_read:
            self._header_bytes += len(data)
            self._check_header_bytes()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        if self._linger_timer is not None:
            return  # closing: a request pipelined behind the last one is not started
        self._awaiting_headers = self._request_begun = False
        # The request line and headers as sent, give or take optional whitespace.
        self._header_bytes = len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if not self._check_header_bytes():
            return
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:
            cycle.transport = _CycleTransport(self)  # type: ignore[assignment]
            if self._draining:
                cycle.keep_alive = False
        self._update_idle()

    def on_body(self, body: bytes) -> None:
        if self._linger_timer is not None:
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            self._discarded += len(body)
            if self._discarded > self.bounds.limits.max_discarded_bytes:
                self._linger_close()
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._linger_timer is not None:
            return
        super().on_message_complete()
        self._awaiting_headers = True
        self._messages_read += 1
        self._discarded = 0
        self._update_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._awaiting_headers and self.expect_100_continue:
            # Answered before its body was asked for: the client will not send it, so the
            # connection cannot frame another request.
            self._linger_close()
            return
        self._update_idle()

    # Server events

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            # Idle: keep it for its usual timeout, out of the set uvicorn waits on; a request
            # on it gets the draining server's answer and the connection closes after it.
            self._draining = True
            self.connections.discard(self)
        else:
            self.cycle.keep_alive = False

    def close_idle(self) -> None:
        """Closed to make room for a new connection (`ConnectionBounds`)."""
        self.connections.discard(self)
        self._cancel_read_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def close_after_response(self) -> None:
        """uvicorn closes after a response: lingering if the request is not all read."""
        if self._awaiting_headers and not self._request_begun:
            self.transport.close()
        else:
            self._linger_close()

    # Bounds, timers and closing

    def _check_header_bytes(self) -> bool:
        limit = self.bounds.limits.max_header_bytes
        if self._header_bytes <= limit:
            return True
        self._answer_and_close(
            HeadersTooLargeError(
                f"the request line and headers exceed {limit} bytes (--max-header-bytes); "
                "send less in headers"
            )
        )
        return False

    def _update_idle(self) -> None:
        """Idle: no request being answered. Idle connections run the read timer and may be
        closed for new ones."""
        idle = (self.cycle is None or self.cycle.response_complete) and not (
            self.transport.is_closing() or self._linger_timer is not None
        )
        self.bounds.set_idle(self, idle)
        if not idle or not self._awaiting_headers:
            self._cancel_read_timer()
            if idle:  # the answer went out before the body came: bound that too
                self._arm_read_timer()
        elif self._read_timer is None:
            self._arm_read_timer()

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(
            self.bounds.limits.read_timeout, self._read_timed_out
        )

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._request_begun:
            self._answer_and_close(
                RequestTimeoutError(
                    f"the request's headers did not arrive within "
                    f"{self.bounds.limits.read_timeout:g} s (--read-timeout)"
                )
            )
        else:
            self.bounds.set_idle(self, False)
            self.transport.close()

    def _answer_and_close(self, error: APIError) -> None:
        """Answer with `error` unless a request is being answered, then close gracefully."""
        if self.transport.is_closing() or self._linger_timer is not None:
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_response_bytes(error, self.server_state.default_headers))
        self._linger_close()

    def _linger_close(self) -> None:
        if self._linger_timer is not None or self.transport.is_closing():
            return
        self._cancel_read_timer()
        self.bounds.set_idle(self, False)
        self.connections.discard(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_started = time.monotonic()
        self._linger_timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    def _linger_more(self) -> None:
        """Bytes during a lingering close are dropped; they push the close back, to a point."""
        assert self._linger_timer is not None
        if time.monotonic() - self._linger_started < _LONGEST_LINGER_SECONDS:
            self._linger_timer.cancel()
            self._linger_timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)


class _CycleTransport:
    """What a request's response cycle writes to: the connection's transport, except that
    closing it after the response lets `close_after_response` decide how."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: BoundedHTTPProtocol) -> None:
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.transport.is_closing()

    def close(self) -> None:
        self._protocol.close_after_response()


def _response_bytes(error: APIError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP response for `error`, written by the protocol itself (no app involved)."""
    body = error.json().encode()
    parts = [STATUS_LINE[error.status]]
    headers = [
        *default_headers,
        (HEADER, new_request_id()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    for name, value in headers:
        if name != b"connection":
            parts += [name, b": ", value, b"\r\n"]
    parts += [b"connection: close\r\n\r\n", body]
    return b"".join(parts)
