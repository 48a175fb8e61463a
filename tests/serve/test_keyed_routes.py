"""The routes of issue 17 on a server with tenants and an allowed browser origin: the same
keys as every route, responses kept per tenant, and CORS a page's script can use."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from ember.serve.api_keys import key_hash
from tests.serve.running_server import MODEL, RunningServer, start_server

pytestmark = pytest.mark.slow  # its own server

ORIGIN = "http://chat.example:5173"
TENANTS = f"""
[tenants.acme]
keys = ["{key_hash("key-acme")}"]
tokens_per_minute = 100000

[tenants.globex]
keys = ["{key_hash("key-globex")}"]
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("keyed-routes")
    tenants = directory / "tenants.toml"
    tenants.write_text(TENANTS)
    running = start_server(
        directory, "--tenants", str(tenants), "--allowed-origins", ORIGIN, "--log-level", "warning"
    )
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def client(server: RunningServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_the_new_routes_need_a_key(keyed: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "Hi"}
    for method, path, json in (
        ("POST", "/tokenize", body),
        ("POST", "/detokenize", {"model": MODEL, "tokens": [1]}),
        ("GET", f"/v1/models/{MODEL}", None),
        ("POST", "/v1/responses", {"model": MODEL, "input": "Hi"}),
        ("GET", "/v1/responses/resp_x", None),
    ):
        refused = httpx.request(method, keyed.url + path, json=json, timeout=60)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "x-request-id" in refused.headers
    answer = httpx.post(
        keyed.url + "/tokenize", json=body, headers={"Authorization": "Bearer key-acme"}, timeout=60
    )
    assert answer.status_code == 200 and answer.json()["count"] == 1
    assert client(keyed, "key-acme").models.retrieve(MODEL).id == MODEL


def test_a_tenants_responses_are_its_own(keyed: RunningServer) -> None:
    acme, globex = client(keyed, "key-acme"), client(keyed, "key-globex")
    first = acme.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert acme.responses.retrieve(first.id).id == first.id
    with pytest.raises(openai.NotFoundError):
        globex.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        globex.responses.create(
            model=MODEL, input="Hi", previous_response_id=first.id, max_output_tokens=1
        )
    assert caught.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        globex.responses.delete(first.id)
    follow_up = acme.responses.create(
        model=MODEL, input="Again", previous_response_id=first.id, max_output_tokens=1
    )
    assert follow_up.previous_response_id == first.id


def test_a_browser_page_of_the_allowed_origin_reads_ids_and_limits(keyed: RunningServer) -> None:
    preflight = httpx.options(
        keyed.url + "/v1/responses",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
        timeout=60,
    )  # a preflight carries no key: it is answered before the gate
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "x-stainless-os" in preflight.headers["access-control-allow-headers"]
    answer = httpx.post(
        keyed.url + "/v1/responses",
        json={"model": MODEL, "input": "Hi", "max_output_tokens": 1},
        headers={"Origin": ORIGIN, "Authorization": "Bearer key-acme"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    present = {"x-request-id", "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"}
    assert present <= exposed and all(name in answer.headers for name in present)
    refused = httpx.post(
        keyed.url + "/v1/responses", json={}, headers={"Origin": ORIGIN}, timeout=60
    )  # without a key: the page can still read why
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(
        keyed.url + "/v1/responses",
        json={},
        headers={"Origin": "http://evil.example", "Authorization": "Bearer key-acme"},
        timeout=60,
    )
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
