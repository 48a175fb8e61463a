"""Host and Origin checks (DNS rebinding, cross-site browser requests) and CORS.

The rules on a stub app through ASGI (fast), then against real `ember serve` processes: the
shared one (default settings: no origin allowed) and the guarded one (an allowed origin and
an extra host name).
"""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from ember.serve.config import ServerConfig
from ember.serve.cross_site import CrossSiteGuard
from tests.serve.conftest import ALLOWED_HOST, ALLOWED_ORIGIN
from tests.serve.running_server import MODEL, RunningServer

OPEN_PATHS = frozenset({"/health"})
EVIL = "http://evil.example"


async def stub_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":  # TestClient's
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ran"})


def guarded_client(**config: object) -> TestClient:
    guard = CrossSiteGuard(stub_app, ServerConfig(**config), OPEN_PATHS)  # type: ignore[arg-type]
    return TestClient(guard, base_url="http://localhost")


def status(headers: dict[str, str], path: str = "/v1/models", **config: object) -> int:
    with guarded_client(**config) as client:
        return client.get(path, headers=headers).status_code


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("LOCALHOST:8000", True),
        ("localhost.:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("192.168.1.5:8000", False),
        ("[::1", False),
        ("localhost:80x", False),
        ("", False),
    ],
)
def test_host_is_checked_against_the_names_the_server_is_bound_to(host: str, allowed: bool) -> None:
    assert status({"Host": host}) == (200 if allowed else 421)


def test_bound_to_a_wildcard_any_address_is_a_name_but_names_must_be_allowed() -> None:
    assert status({"Host": "192.168.1.5:8000"}, host="0.0.0.0") == 200
    assert status({"Host": "[fe80::1]:8000"}, host="::") == 200
    assert status({"Host": "my-box:8000"}, host="0.0.0.0") == 421
    assert status({"Host": "my-box:8000"}, host="0.0.0.0", allowed_hosts=("My-Box",)) == 200
    assert status({"Host": "anything"}, allowed_hosts=("*",)) == 200


def test_the_421_says_what_to_change() -> None:
    with guarded_client(host="10.0.0.2") as client:
        response = client.get("/v1/models", headers={"Host": "evil.example:80"})
    error = response.json()["error"]
    assert response.status_code == 421 and error["code"] == "host_not_allowed"
    assert "'evil.example:80'" in error["message"] and "10.0.0.2" in error["message"]
    assert "--allowed-hosts" in error["message"]


def test_cross_site_requests_are_refused_unless_allowed() -> None:
    assert status({"Origin": EVIL}) == 403
    assert status({"Origin": "null"}) == 403
    assert status({"Origin": EVIL}, allowed_origins=(EVIL + "/",)) == 200
    assert status({"Origin": EVIL}, allowed_origins=("*",)) == 200
    assert status({"Origin": EVIL}, path="/health") == 200  # probes answer anyone
    assert status({"Host": "evil.example"}, path="/health") == 200


def test_a_page_of_the_servers_own_origin_is_not_cross_site() -> None:
    same = {"Host": "localhost:8000", "Origin": "http://localhost:8000"}
    assert status(same) == 200
    assert status({"Host": "localhost:8000", "Origin": "http://localhost:9000"}) == 403


def test_allowed_origins_get_cors_headers_and_preflights() -> None:
    with guarded_client(allowed_origins=(EVIL,)) as client:
        response = client.post("/v1/completions", headers={"Origin": EVIL})
        preflight = client.options(
            "/v1/completions",
            headers={
                "Origin": EVIL,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        refused = client.options(
            "/v1/completions",
            headers={"Origin": "http://other.example", "Access-Control-Request-Method": "POST"},
        )
    assert response.text == "ran" and response.headers["access-control-allow-origin"] == EVIL
    assert "Origin" in response.headers["vary"]
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == EVIL
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_pages_may_read_the_request_id_and_rate_limit_headers() -> None:
    with guarded_client(allowed_origins=(EVIL,)) as client:
        response = client.post("/v1/completions", headers={"Origin": EVIL})
        preflight = client.options(
            "/v1/responses",
            headers={"Origin": EVIL, "Access-Control-Request-Method": "DELETE"},
        )
    for answer in (response, preflight):
        exposed = answer.headers["access-control-expose-headers"]
        assert "x-request-id" in exposed and "retry-after" in exposed
        assert "x-ratelimit-remaining-tokens" in exposed and "x-ratelimit-reset-requests" in exposed
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    # Without Access-Control-Request-Headers: the headers an OpenAI client sends.
    allowed = preflight.headers["access-control-allow-headers"]
    assert "authorization" in allowed and "content-type" in allowed


def test_a_preflight_echoes_only_header_names() -> None:
    with guarded_client(allowed_origins=(EVIL,)) as client:
        odd = client.options(
            "/v1/completions",
            headers={
                "Origin": EVIL,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, x-a b; c=d",
            },
        )
    assert odd.status_code == 204
    assert "x-a b" not in odd.headers["access-control-allow-headers"]


def test_other_origins_get_no_cors_headers_on_errors_either() -> None:
    with guarded_client(allowed_origins=(EVIL,)) as client:
        refused = client.post("/v1/completions", headers={"Origin": "http://other.example"})
    assert refused.status_code == 403
    assert not any(name.startswith("access-control-") for name in refused.headers)


def test_configured_hosts_and_origins_are_checked() -> None:
    with pytest.raises(Exception, match="--allowed-origins takes origins"):
        ServerConfig(allowed_origins=("evil.example",))
    with pytest.raises(Exception, match="--allowed-origins takes origins"):
        ServerConfig(allowed_origins=("http://evil.example/path",))
    with pytest.raises(Exception, match="--allowed-hosts takes host names"):
        ServerConfig(allowed_hosts=("evil.example:8000",))
    ServerConfig(allowed_hosts=("::1", "example.com", "*"), allowed_origins=("https://a.b:1",))


def test_a_forged_host_gets_421_from_the_server(server: RunningServer) -> None:
    # DNS rebinding: the page's own name, now resolving to 127.0.0.1.
    response = httpx.get(
        server.url + "/v1/models", headers={"Host": f"rebound.example:{server.port}"}
    )
    assert response.status_code == 421, response.text
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(server.url + "/v1/models", headers={"Host": "localhost"}).status_code == 200
    assert httpx.get(server.url + "/ready", headers={"Host": "rebound.example"}).status_code == 200


def test_a_cross_site_text_plain_post_is_refused_before_it_runs(server: RunningServer) -> None:
    # What a page of any site can make a browser send without a preflight (Ollama's CVE).
    before = server.metric("vllm:prompt_tokens_total")
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    response = httpx.post(
        server.url + "/v1/completions",
        content=body,
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
        timeout=60,
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    assert server.metric("vllm:prompt_tokens_total") == before


@pytest.mark.slow  # the guarded server
def test_an_allowed_origin_works_with_cors(guarded_server: RunningServer) -> None:
    url = guarded_server.url + "/v1/completions"
    preflight = httpx.options(
        url,
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    response = httpx.post(
        url,
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 1},
        headers={"Origin": ALLOWED_ORIGIN, "Host": f"{ALLOWED_HOST}:{guarded_server.port}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    assert response.json()["choices"][0]["finish_reason"] == "length"
    # An error's answer to an allowed page is readable by it too.
    missing = httpx.get(
        guarded_server.url + "/v1/models/gpt-4o", headers={"Origin": ALLOWED_ORIGIN}, timeout=60
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert missing.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in missing.headers
    refused = httpx.post(url, json={"model": MODEL}, headers={"Origin": EVIL}, timeout=60)
    assert refused.status_code == 403
