"""The bounded httptools protocol on its own: uvicorn in a thread with a tiny app, raw sockets.

Fast (no model): the bounds on headers, read time and connection count, lingering closes and
the JSON shape of protocol errors. `test_connections.py` runs the same against `ember serve`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ember.serve import http_protocol
from ember.serve.api_errors import APIError, api_error_response
from ember.serve.connection_bounds import ConnectionBounds, ConnectionLimits
from ember.serve.http_body import read_body
from ember.serve.http_protocol import bounded_protocol

READ_TIMEOUT = 0.5
BODY_LIMIT = 64 << 10
LIMITS = ConnectionLimits(
    max_connections=8,
    max_header_bytes=4096,
    read_timeout=READ_TIMEOUT,
    max_discarded_bytes=4 * BODY_LIMIT,
)


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def hold(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params["seconds"]))
    return PlainTextResponse("held")


async def upload(request: Request) -> Response:
    body = await read_body(request, BODY_LIMIT, READ_TIMEOUT)
    return PlainTextResponse(str(len(body)))


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return api_error_response(error)


APP = Starlette(
    routes=[
        Route("/ok", ok),
        Route("/hold", hold),
        Route("/upload", upload, methods=["POST"]),
    ],
    exception_handlers={APIError: api_error},
)


@contextmanager
def serving(limits: ConnectionLimits = LIMITS) -> Iterator[ConnectionBounds]:
    bounds = ConnectionBounds(limits)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    config = uvicorn.Config(
        APP, http=bounded_protocol(bounds), ws="none", log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    bounds.port = listener.getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield bounds
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.fixture(scope="module")
def bounds() -> Iterator[ConnectionBounds]:
    with serving() as running:
        yield running


class Connection:
    """A raw client connection that reads responses framed by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self._file = self.sock.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = self._file.readline()
        if not status:
            raise ConnectionError("closed before a response")
        headers = {}
        while (line := self._file.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
        body = self._file.read(int(headers.get("content-length", 0)))
        return int(status.split()[1]), headers, body

    def error(self, status: int, code: str) -> dict[str, str]:
        """The OpenAI-shaped error of the next response, with its headers as `header:name`."""
        got, headers, body = self.response()
        assert got == status, body
        assert headers["content-type"] == "application/json"
        error: dict[str, str] = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
        return {**error, **{f"header:{k}": v for k, v in headers.items()}}

    def closed(self) -> bool:
        try:
            return self._file.read(1) == b""
        except ConnectionResetError:
            return True


def connect(bounds: ConnectionBounds) -> Connection:
    return Connection(bounds.port)  # type: ignore[attr-defined]


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" + extra + b"\r\n"


def test_requests_are_served_and_pipelining_still_works(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        sock.sendall(get("/ok") + get("/ok"))
        assert sock.response()[2] == b"ok"
        assert sock.response()[2] == b"ok"


def test_headers_over_the_bound_get_431_and_the_connection_closes(
    bounds: ConnectionBounds,
) -> None:
    with connect(bounds) as sock:
        sock.sendall(get("/ok", b"X-Big: " + b"a" * 8192 + b"\r\n"))
        error = sock.error(431, "request_header_fields_too_large")
        assert "4096 bytes (--max-header-bytes)" in error["message"]
        assert error["header:connection"] == "close"
        assert sock.closed()


def test_a_body_in_the_same_packet_does_not_count_as_headers(bounds: ConnectionBounds) -> None:
    body = b"x" * (BODY_LIMIT - 1)
    head = f"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
    with connect(bounds) as sock:
        sock.sendall(head.encode() + body)
        assert sock.response()[2] == str(len(body)).encode()


def test_half_sent_headers_get_408_after_the_read_timeout(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: loc")
        started = time.monotonic()
        error = sock.error(408, "read_timeout")
        assert READ_TIMEOUT - 0.1 < time.monotonic() - started < READ_TIMEOUT + 1.0
        assert "--read-timeout" in error["message"] and sock.closed()


def test_a_silent_connection_is_closed_after_the_read_timeout(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        started = time.monotonic()
        assert sock.closed()  # no response: nothing was asked
        assert READ_TIMEOUT - 0.1 < time.monotonic() - started < READ_TIMEOUT + 1.0


def test_a_kept_alive_connection_is_closed_when_it_goes_quiet(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        sock.sendall(get("/ok"))
        sock.response()
        sock.sendall(b"GET /ok HTTP/1.1\r\n")  # a second request that never completes
        started = time.monotonic()
        sock.error(408, "read_timeout")
        assert time.monotonic() - started < READ_TIMEOUT + 1.0


def test_a_stalled_body_gets_408_and_the_connection_closes(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        sock.sendall(b"x" * 10)
        error = sock.error(408, "read_timeout")
        assert "after 10 bytes" in error["message"] and error["header:connection"] == "close"


def test_bytes_that_are_not_http_get_an_openai_shaped_400(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:
        sock.sendall(b"\x16\x03\x01 hello\r\n\r\n")  # a TLS hello, say
        error = sock.error(400, "invalid_http")
        assert "not valid HTTP/1.1" in error["message"] and sock.closed()


@pytest.mark.parametrize("connection", [b"close", b"keep-alive"])
def test_413_is_read_after_the_body_not_a_reset(
    bounds: ConnectionBounds, connection: bytes
) -> None:
    body = b"x" * (3 * BODY_LIMIT)
    head = (
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
        % (len(body), connection)
    )
    with connect(bounds) as sock:
        sock.sendall(head + body)  # as most clients do: the whole request, then the answer
        sock.error(413, "request_too_large")
        if connection == b"keep-alive":  # the rest of the body was dropped: usable again
            sock.sendall(get("/ok"))
            assert sock.response()[2] == b"ok"
        else:
            assert sock.closed()


@pytest.mark.slow  # a lingering close of a second or more
def test_a_body_far_over_the_bound_is_cut_off_after_its_413(
    bounds: ConnectionBounds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_protocol, "_LONGEST_LINGER_SECONDS", 1.0)
    head = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (1 << 30)
    with connect(bounds) as sock:
        sock.sendall(head)
        sock.error(413, "request_too_large")
        with pytest.raises(OSError):  # dropped up to the bound, then a lingering close
            for _ in range(1 << 20):
                sock.sendall(b"x" * 65536)


def test_at_the_bound_the_longest_idle_connection_makes_room() -> None:
    with serving(ConnectionLimits(2, 4096, 10.0, BODY_LIMIT)) as bounds:
        first, second = connect(bounds), connect(bounds)
        time.sleep(0.1)
        with connect(bounds) as third:
            third.sendall(get("/ok"))
            assert third.response()[2] == b"ok"
        assert first.closed() and bounds.idle_closed == 1
        second.sendall(get("/ok"))
        assert second.response()[2] == b"ok"
        first.close()
        second.close()


def test_at_the_bound_with_no_idle_connection_a_new_one_gets_503() -> None:
    with serving(ConnectionLimits(1, 4096, 10.0, BODY_LIMIT)) as bounds:
        with connect(bounds) as busy:
            busy.sendall(get("/hold?seconds=1"))
            time.sleep(0.2)
            with connect(bounds) as refused:
                error = refused.error(503, "too_many_connections")
                assert error["header:retry-after"] == "1" and refused.closed()
            assert busy.response()[2] == b"held"
        assert bounds.refused == 1


def test_an_upgrade_request_is_served_as_plain_http(bounds: ConnectionBounds) -> None:
    with connect(bounds) as sock:  # what `curl --http2 http://...` sends
        sock.sendall(get("/ok", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"))
        assert sock.response()[2] == b"ok"


def test_a_413_to_an_expect_100_continue_closes_the_connection(bounds: ConnectionBounds) -> None:
    head = (
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n" % (2 * BODY_LIMIT)
    )
    with connect(bounds) as sock:
        sock.sendall(head)  # and wait: the body only follows a 100 Continue
        sock.error(413, "request_too_large")
        assert sock.closed()
