"""`x-request-id` on every response: the app's errors, an exception no layer caught, and the
HTTP protocol's own refusals."""

from __future__ import annotations

import re
import socket

from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from ember.serve.request_ids import RequestIds
from tests.serve.running_server import RunningServer

NEW_ID = re.compile(r"[0-9a-f]{32}")


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    raise RuntimeError("a bug in a middleware")


def test_an_exception_that_escaped_every_layer_is_an_openai_500_with_an_id() -> None:
    with TestClient(RequestIds(failing_app), raise_server_exceptions=False) as client:
        response = client.get("/v1/models", headers={"x-request-id": "trace-7"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "trace-7"
    assert response.json()["error"]["code"] == "internal_error"
    assert "a bug" not in response.text


def test_errors_carry_the_id(server: RunningServer) -> None:
    answers = [
        server.get("/v1/nothing"),  # 404 route
        server.get("/v1/models/gpt-4o"),  # 404 model
        server.get("/v1/chat/completions"),  # 405
        server.get("/tokenize"),  # 405
    ]
    for answer in answers:
        assert answer.status_code >= 400 and NEW_ID.fullmatch(answer.headers["x-request-id"])
    assert len({a.headers["x-request-id"] for a in answers}) == len(answers)


def test_the_protocols_own_refusal_carries_an_id(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 400"), head
    found = re.search(r"(?im)^x-request-id: (\S+)\r?$", head)
    assert found is not None and NEW_ID.fullmatch(found.group(1)), head
