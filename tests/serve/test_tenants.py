"""Tenants against a real `ember serve --tenants FILE` with the real `openai` client: the auth
matrix, OpenAI's headers, exact token accounting, reloads, queue timeouts and shedding."""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ember.serve.api_keys import key_hash
from tests.serve.running_server import MODEL, RunningServer, start_server

pytestmark = pytest.mark.slow

TOKENS_PER_MINUTE = 120  # 2 a second: the refill during a test is small and measured
REQUESTS_PER_MINUTE = 30
PROMPT_IDS = [504, 3575, 282, 4649, 314, 504, 3575, 282, 4649, 314]  # 10 tokens


def tenants_toml(revoked: bool = False) -> str:
    revocable = "" if revoked else f'"{key_hash("key-revoke")}"'
    return f"""
[classes.impatient]
priority = 1
queue_timeout = 0.5

[tenants.acme]
keys = ["{key_hash("key-acme")}"]
class = "interactive"
tokens_per_minute = {TOKENS_PER_MINUTE}
requests_per_minute = {REQUESTS_PER_MINUTE}

[tenants.refunds]
keys = ["{key_hash("key-refunds")}"]
tokens_per_minute = 600

[tenants.vip]
keys = ["{key_hash("key-vip")}"]
class = "interactive"

[tenants.bulk]
keys = ["{key_hash("key-bulk")}"]
class = "batch"

[tenants.hasty]
keys = ["{key_hash("key-hasty")}"]
class = "impatient"

[tenants.elsewhere]
keys = ["{key_hash("key-elsewhere")}"]
models = ["another-model"]

[tenants.old]
keys = ["{key_hash("key-old")}"]
expires = 2020-01-01T00:00:00Z

[tenants.revocable]
keys = [{revocable}]
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    directory = tmp_path_factory.mktemp("tenants")
    path = directory / "tenants.toml"
    path.write_text(tenants_toml())
    running = start_server(
        directory,
        "--tenants",
        str(path),
        "--max-num-seqs",
        "1",
        "--max-queued-requests",
        "1",
        "--log-level",
        "info",
    )
    yield running, path
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def client(server: RunningServer, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "", max_retries=0, timeout=120)


def chat(server: RunningServer, key: str | None, **extra: object) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**body, **extra},
        headers=headers,
        timeout=120,
    )


def test_the_auth_matrix(keyed: tuple[RunningServer, Path]) -> None:
    server, _ = keyed
    assert server.get("/health").status_code == 200 and server.get("/ready").status_code == 200
    for path in ("/metrics", "/v1/models"):
        refused = server.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    for key in (None, "sk-ember-wrong", "key-old"):
        answer = chat(server, key)
        assert answer.status_code == 401, (key, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert key is None or key not in answer.text  # a key is never echoed
    assert "expired" in chat(server, "key-old").json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-ember-wrong").models.list()
    with pytest.raises(openai.NotFoundError) as outside:
        client(server, "key-elsewhere").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
    assert outside.value.code == "model_not_found"
    assert client(server, "key-elsewhere").models.list().data == []
    assert [m.id for m in client(server, "key-vip").models.list().data] == [MODEL]
    reply = client(server, "key-vip").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    log = server.log.read_text()
    assert "keys required: 8 tenants" in log and "key-vip" not in log


def test_request_ids(keyed: tuple[RunningServer, Path]) -> None:
    server, _ = keyed
    for headers, echoed in (({"x-request-id": "trace-42.a:b"}, True), ({}, False)):
        for path in ("/health", "/v1/models"):
            answer = httpx.get(server.url + path, headers=headers, timeout=30)
            if echoed:
                assert answer.headers["x-request-id"] == "trace-42.a:b"
            else:
                assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    insane = httpx.get(server.url + "/health", headers={"x-request-id": "a b" * 100}, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["x-request-id"])


def completion(server: RunningServer, max_tokens: int | None) -> httpx.Response:
    body: dict[str, object] = {"model": MODEL, "prompt": PROMPT_IDS, "ignore_eos": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return httpx.post(
        f"{server.url}/v1/completions",
        json=body,
        headers={"Authorization": "Bearer key-acme"},
        timeout=120,
    )


def test_exact_token_accounting(keyed: tuple[RunningServer, Path]) -> None:
    """Each request reserves its 10 prompt tokens plus max_tokens and, generating exactly
    max_tokens (ignore_eos), keeps them: the remaining headers fall by exactly that, plus the
    refill of 2 tokens a second the client measures, and the request that needs more than is
    left gets 429 with the wait the bucket says."""
    server, _ = keyed
    started = time.monotonic()
    expected_tokens, expected_requests = TOKENS_PER_MINUTE, REQUESTS_PER_MINUTE
    for max_tokens in (5, 20, 30, 15):
        answer = completion(server, max_tokens)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["total_tokens"] == 10 + max_tokens
        expected_tokens -= 10 + max_tokens
        expected_requests -= 1
        refill = math.ceil(2 * (time.monotonic() - started))
        headers = answer.headers
        assert headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MINUTE)
        assert headers["x-ratelimit-limit-requests"] == str(REQUESTS_PER_MINUTE)
        remaining = int(headers["x-ratelimit-remaining-tokens"])
        assert expected_tokens <= remaining <= expected_tokens + refill, (remaining, refill)
        requests_left = int(headers["x-ratelimit-remaining-requests"])
        assert expected_requests <= requests_left <= expected_requests + math.ceil(refill / 4)
        for name in ("reset-tokens", "reset-requests"):
            assert re.fullmatch(r"\d+ms|(\d+m)?\d+(\.\d+)?s", headers[f"x-ratelimit-{name}"])
    # About 40 left: asking for 10 + 60 is over by 30, 15 s of refill.
    refused = completion(server, 60)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens"
    left = int(refused.headers["x-ratelimit-remaining-tokens"])
    assert int(refused.headers["retry-after"]) == math.ceil((70 - left) / 2)
    # With no max_tokens the reservation is the context's remainder: never within a minute.
    too_large = completion(server, None)
    assert too_large.status_code == 429 and too_large.json()["error"]["param"] == "max_tokens"
    with pytest.raises(openai.RateLimitError):
        client(server, "key-acme").completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=60)
    fits = completion(server, left - 10 - 2)  # what is left, less a margin of a second
    assert fits.status_code == 200, fits.text


def test_unused_tokens_are_refunded(keyed: tuple[RunningServer, Path]) -> None:
    """A stream's headers show its whole reservation (10 + 200 of 600); when the client goes
    away after its first tokens, what it did not generate comes back."""
    server, _ = keyed
    refunds = client(server, "key-refunds")
    raw = refunds.completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT_IDS, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
    )
    reserved_left = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert 390 <= reserved_left <= 400
    stream = raw.parse()
    for _ in stream:
        break
    stream.close()  # a disconnect
    time.sleep(0.5)
    after = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": MODEL, "prompt": PROMPT_IDS, "max_tokens": 1},
        headers={"Authorization": "Bearer key-refunds"},
        timeout=120,
    )
    left = int(after.headers["x-ratelimit-remaining-tokens"])
    # 600, less the stream's prompt and the few tokens it got (< 30), less this request's 11.
    assert left >= 600 - 10 - 30 - 11, (reserved_left, left)


def test_revoked_by_reload_within_a_second_running_requests_finish(
    keyed: tuple[RunningServer, Path],
) -> None:
    server, path = keyed
    revocable = client(server, "key-revoke")
    stream = revocable.completions.create(
        model=MODEL, prompt=PROMPT_IDS, max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks)
    path.write_text(tenants_toml(revoked=True))
    written = time.monotonic()
    while chat(server, "key-revoke").status_code != 401:
        assert time.monotonic() - written < 1.5
        time.sleep(0.05)
    refused_after = time.monotonic() - written
    assert refused_after < 1.2, refused_after
    rest = list(chunks)  # the stream admitted before the reload runs to its end
    assert rest[-1].choices[0].finish_reason == "length"
    # A broken file keeps the tenants in force, with an error in the log.
    path.write_text("[tenants.acme\n")
    time.sleep(1.2)
    assert chat(server, "key-vip").status_code == 200
    assert "tenants file not reloaded" in server.log.read_text()
    path.write_text(tenants_toml())
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while chat(server, "key-revoke").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "tenants reloaded" in server.log.read_text()


def test_queue_timeout_and_shedding(keyed: tuple[RunningServer, Path]) -> None:
    """One sequence runs at a time and one may wait. A waiting batch request is shed (503)
    for an interactive one; a batch request that finds the queue full is shed at once; a
    request waiting longer than its class's queue timeout gets 503."""
    server, _ = keyed
    vip = client(server, "key-vip")
    long = vip.completions.create(
        model=MODEL, prompt=PROMPT_IDS, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(long)
    next(chunks)  # running: it holds the only slot
    try:
        timed_out = chat(server, "key-hasty")
        assert timed_out.status_code == 503, timed_out.text
        assert timed_out.json()["error"]["code"] == "queue_timeout"
        assert "retry-after" in timed_out.headers
        answers: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: answers.update(bulk=chat(server, "key-bulk")))
        waiting.start()
        time.sleep(1.0)  # the batch request waits in the only queue place
        refused = chat(server, "key-bulk")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shed"
        second = threading.Thread(target=lambda: answers.update(vip=chat(server, "key-vip")))
        second.start()
        waiting.join(60)
        shed = answers["bulk"]
        assert shed.status_code == 503, shed.text
        assert shed.json()["error"]["code"] == "shed" and "retry-after" in shed.headers
    finally:
        long.close()
    second.join(120)
    assert answers["vip"].status_code == 200, answers["vip"].text
    metrics = httpx.get(
        server.url + "/metrics", headers={"Authorization": "Bearer key-vip"}, timeout=30
    ).text
    for sample in (
        'ember:tenant_requests_total{class="batch",outcome="shed",tenant="bulk"} 2.0',
        'ember:tenant_requests_total{class="impatient",outcome="503",tenant="hasty"} 1.0',
        'ember:tenant_requests_total{class="",outcome="401",tenant=""}',
        'ember:tenant_time_to_first_token_seconds_count{class="interactive",tenant="vip"}',
        'ember:tenant_generation_tokens_total{class="interactive",tenant="vip"}',
    ):
        assert sample in metrics, sample
