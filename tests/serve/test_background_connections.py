"""A background class's keep-alive connection reads its next request only in its turn in the
server's `BackgroundLane`, and that request does not wait for a second turn at the tenant
gate; other classes' connections are never held. uvicorn in a thread with the real
middleware (`wrap_routes`, the tenant gate over a tenants file) and a tiny route."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.engine.config import EngineConfig
from ember.serve.api_keys import key_hash
from ember.serve.app import wrap_routes
from ember.serve.background_lane import BackgroundLane
from ember.serve.config import ServerConfig
from ember.serve.connection_bounds import ConnectionBounds, ConnectionLimits
from ember.serve.http_protocol import bounded_protocol
from ember.serve.metrics import ServerMetrics
from ember.serve.rate_limits import RateLimiter
from ember.serve.tenant_directory import TenantDirectory
from ember.serve.tenant_gate import lane_turn_taken

LIMITS = ConnectionLimits(
    max_connections=8, max_header_bytes=4096, read_timeout=5.0, max_discarded_bytes=1 << 20
)


async def who(request: Request) -> Response:
    return JSONResponse({"turn_taken": lane_turn_taken(request.scope)})


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tenants = tmp_path_factory.mktemp("lane") / "tenants.toml"
    tenants.write_text(
        f'[tenants.bulk]\nkeys = ["{key_hash("key-bulk")}"]\nclass = "batch"\n\n'
        f'[tenants.chat]\nkeys = ["{key_hash("key-chat")}"]\nclass = "interactive"\n'
    )
    config = ServerConfig(engine=EngineConfig())
    lane = BackgroundLane()
    app = wrap_routes(
        [Route("/v1/who", who)],
        config,
        ServerMetrics("m", 8),
        TenantDirectory.from_settings(str(tenants), None),
        RateLimiter(),
        lane,
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    uv_config = uvicorn.Config(
        app,
        http=bounded_protocol(ConnectionBounds(LIMITS), lane),
        ws="none",
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(uv_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield listener.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    listener.close()


def turns(port: int, key: str, requests: int) -> list[bool]:
    """Each of `requests` sequential requests on one keep-alive connection: whether it was
    read in a lane turn."""
    request = (
        f"GET /v1/who HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    found = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        reader = sock.makefile("rb")
        for _ in range(requests):
            sock.sendall(request)
            status = reader.readline()
            assert status.split()[1] == b"200", status
            length = 0
            while (line := reader.readline().strip()) != b"":
                name, _, value = line.partition(b": ")
                if name.lower() == b"content-length":
                    length = int(value)
            found.append(json.loads(reader.read(length))["turn_taken"])
        reader.close()
    return found


def test_a_background_connections_next_requests_are_read_in_their_turn(port: int) -> None:
    assert turns(port, "key-bulk", 4) == [False, True, True, True]


def test_other_classes_connections_are_never_held(port: int) -> None:
    assert turns(port, "key-chat", 3) == [False, False, False]


def test_a_held_connection_answers_a_request_sent_while_it_waited(port: int) -> None:
    """The next request sent at once after an answer (while the connection may still wait for
    its turn) is answered, not dropped with the connection."""
    for _ in range(5):
        assert turns(port, "key-bulk", 2)[1] is True
