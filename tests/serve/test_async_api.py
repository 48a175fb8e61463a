"""The async API against real processes: a real nats-server (EmbeddedNats), `ember serve
--queue` and `ember gateway` started as a user would, `ember worker` when a test needs jobs run,
on the tiny model fixture.

Each module-scoped NATS server is one queue: the `idle` one never has a worker, so its jobs
stay queued for the tests of submits, idempotency, tenants and cancels.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ember.queue.nats_server import EmbeddedNats
from ember.serve.api_keys import key_hash
from ember.serve.async_routes import preferred_wait
from ember.serve.config import MAX_JOB_WAIT_SECONDS
from tests.serve.running_server import MODEL as RUNNING_MODEL
from tests.serve.running_server import RunningServer, start_server

TINY = str(Path(__file__).resolve().parent.parent / "fixtures" / "tiny_llama.gguf")
MODEL = "tiny_llama"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "once upon", "max_tokens": 4}
ACME = {"Authorization": "Bearer key-acme"}
OTHER = {"Authorization": "Bearer key-other"}


def tenants_file(directory: Path) -> Path:
    path = directory / "tenants.toml"
    path.write_text(
        f'[tenants.acme]\nkeys = ["{key_hash("key-acme")}"]\nclass = "interactive"\n\n'
        f'[tenants.other]\nkeys = ["{key_hash("key-other")}"]\n\n'
        f'[tenants.metered]\nkeys = ["{key_hash("key-metered")}"]\nrequests_per_minute = 2\n\n'
        f'[tenants.tokens]\nkeys = ["{key_hash("key-tokens")}"]\ntokens_per_minute = 300\n'
    )
    return path


class Worker:
    """An `ember worker` process on the tiny model."""

    def __init__(self, log_dir: Path, nats_url: str, *args: str) -> None:
        self.log = log_dir / f"ember-worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ember.cli", "worker", "--nats", nats_url,
                 "--model", TINY, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def nats_server(store: Path, port: int | None = None) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(store, port=port).start()
    try:
        yield server
    finally:
        server.stop()
        if server.process is not None and server.process.stderr is not None:
            server.process.stderr.close()


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
def idle_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with nats_server(tmp_path_factory.mktemp("idle-nats")) as server:
        yield server


@pytest.fixture(scope="module")
def idle(
    tmp_path_factory: pytest.TempPathFactory, idle_nats: EmbeddedNats
) -> Iterator[RunningServer]:
    """`ember serve --queue --no-local-worker` with tenants, on a queue no worker reads."""
    directory = tmp_path_factory.mktemp("idle")
    running = start_server(
        directory, "--model", TINY, "--queue", "--nats", idle_nats.url, "--no-local-worker",
        "--tenants", str(tenants_file(directory)), "--metrics-public", "--log-level", "warning",
    )  # fmt: skip
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, nats: EmbeddedNats
) -> Iterator[RunningServer]:
    """`ember gateway` (no engine) with tenants, on the queue the workers of these tests read."""
    directory = tmp_path_factory.mktemp("gateway")
    running = start_server(
        directory, "--model", TINY, "--nats", nats.url, "--tenants",
        str(tenants_file(directory)), "--metrics-public", "--log-level", "warning",
        command="gateway",
    )  # fmt: skip
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


@pytest.fixture
def worker(tmp_path: Path, nats: EmbeddedNats) -> Iterator[Worker]:
    running = Worker(tmp_path, nats.url)
    yield running
    running.stop()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def post(server: RunningServer, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={**ACME, **headers}, timeout=120)


def job_of(
    server: RunningServer, job_id: str, wait: float = 0, key: dict[str, str] = ACME
) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}", params={"wait": wait}, headers=key,
                     timeout=120)  # fmt: skip


def completed(server: RunningServer, job_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, object] = job_of(server, job_id, wait=MAX_JOB_WAIT_SECONDS).json()
        if job["status"] not in ("queued", "in_progress"):
            return job
    raise TimeoutError(f"job {job_id} not final after {timeout} s")


# -- no worker: submits, idempotency, tenants, cancels, refusals --------------------------------


def test_submit_answers_202_with_a_job_and_its_location(idle: RunningServer) -> None:
    answer = post(idle, "/v1/async/chat/completions", CHAT)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["object"] == "job" and job["status"] == "queued" and job["kind"] == "chat.completion"
    assert job["id"].startswith("job_") and job["attempts"] == 0
    assert isinstance(job["created_at"], int) and job["finished_at"] is None
    assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job_of(idle, job["id"]).json() == job


def test_prefer_wait_without_a_worker_answers_202_after_the_wait(idle: RunningServer) -> None:
    start = time.monotonic()
    answer = post(idle, "/v1/async/completions", COMPLETION, Prefer="respond-async, wait=1")
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    assert answer.headers["preference-applied"] == "wait=1"
    assert 0.9 < time.monotonic() - start < 10


def test_get_wait_returns_the_job_as_it_is_at_the_timeout(idle: RunningServer) -> None:
    job_id = post(idle, "/v1/async/completions", COMPLETION).json()["id"]
    start = time.monotonic()
    assert job_of(idle, job_id, wait=0.5).json()["status"] == "queued"
    assert time.monotonic() - start >= 0.45
    refused = job_of(idle, job_id, wait=-1)  # type: ignore[arg-type]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "wait"


def test_one_idempotency_key_makes_one_job_of_100_concurrent_submits(idle: RunningServer) -> None:
    body = {**COMPLETION, "prompt": "idempotent"}
    keyed = {"Idempotency-Key": "same"}
    with ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda _: post(idle, "/v1/async/completions", body, **keyed), range(100))
        )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    other = post(idle, "/v1/async/completions", {**body, "prompt": "another"},
                 **{"Idempotency-Key": "same"})  # fmt: skip
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert set(other.json()["error"]) == {"message", "type", "param", "code"}
    # Another tenant's key of the same name is its own.
    theirs = post(idle, "/v1/async/completions", body, **{"Idempotency-Key": "same", **OTHER})
    assert theirs.status_code == 202 and theirs.json()["id"] != answers[0].json()["id"]


def test_another_tenants_key_gets_404_for_a_job(idle: RunningServer) -> None:
    job_id = post(idle, "/v1/async/completions", COMPLETION).json()["id"]
    assert job_of(idle, job_id, key=OTHER).status_code == 404
    cancel = httpx.post(f"{idle.url}/v1/jobs/{job_id}/cancel", headers=OTHER, timeout=30)
    assert cancel.status_code == 404 and cancel.json()["error"]["code"] == "job_not_found"
    assert job_of(idle, job_id).json()["status"] == "queued"  # untouched
    assert job_of(idle, "job_nonexistent").status_code == 404
    assert httpx.get(f"{idle.url}/v1/jobs/{job_id}", timeout=30).status_code == 401


def test_a_new_job_costs_its_tenant_a_request(idle: RunningServer) -> None:
    metered = {"Authorization": "Bearer key-metered"}
    first = post(idle, "/v1/async/completions", COMPLETION, **{"Idempotency-Key": "m", **metered})
    assert first.status_code == 202
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    # A retry answered with the job it made is free.
    again = post(idle, "/v1/async/completions", COMPLETION, **{"Idempotency-Key": "m", **metered})
    assert again.json()["id"] == first.json()["id"]
    assert post(idle, "/v1/async/completions", COMPLETION, **metered).status_code == 202
    refused = post(idle, "/v1/async/completions", COMPLETION, **metered)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_job_reserves_its_tenants_tokens_as_a_sync_request_and_a_cancel_refunds_them(
    idle: RunningServer,
) -> None:
    """The tenant may use 300 tokens a minute (5 a second come back)."""
    metered = {"Authorization": "Bearer key-tokens"}
    too_many = {**COMPLETION, "max_tokens": 240, "n": 2}  # fits the context (256), not 300
    refused = post(idle, "/v1/async/completions", too_many, **metered)
    assert refused.status_code == 429 and refused.json()["error"]["param"] == "max_tokens"
    sync = post(idle, "/v1/completions", too_many, **metered)
    assert (sync.status_code, sync.json()["error"]) == (429, refused.json()["error"])
    first = post(idle, "/v1/async/completions", {**COMPLETION, "max_tokens": 200}, **metered)
    assert first.status_code == 202
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 300 - 200 - 10 <= left <= 300 - 200  # the prompt's few tokens too
    refused = post(idle, "/v1/async/completions", {**COMPLETION, "max_tokens": 150}, **metered)
    assert refused.status_code == 429, refused.text
    assert "tokens per minute" in refused.json()["error"]["message"]
    cancel = httpx.post(f"{idle.url}/v1/jobs/{first.json()['id']}/cancel", headers=metered,
                        timeout=30)  # fmt: skip
    assert cancel.json()["status"] == "cancelled"
    deadline = time.monotonic() + 10  # the refund comes with the cancelled state's update
    while True:
        again = post(idle, "/v1/async/completions", {**COMPLETION, "max_tokens": 150}, **metered)
        if again.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 202, again.text


def test_cancel_a_queued_job(idle: RunningServer) -> None:
    job_id = post(idle, "/v1/async/completions", COMPLETION).json()["id"]
    depth = idle.metric("ember:queue_depth")
    cancel = httpx.post(f"{idle.url}/v1/jobs/{job_id}/cancel", headers=ACME, timeout=30)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert cancel.json()["finished_at"] is not None
    assert job_of(idle, job_id).json()["status"] == "cancelled"
    assert idle.metric("ember:queue_depth") == depth - 1  # its message left the stream
    again = httpx.post(f"{idle.url}/v1/jobs/{job_id}/cancel", headers=ACME, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    counted = {"endpoint": "/v1/jobs/{job_id}/cancel", "status": "200"}
    assert idle.metric("ember:http_requests_total", **counted) >= 2


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/async/chat/completions", b"{not json", None),
        ("/v1/async/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/async/chat/completions", {**CHAT, "temperature": -1}, "temperature"),
        ("/v1/async/chat/completions", {**CHAT, "stream": True}, "stream"),
        ("/v1/async/completions", {**COMPLETION, "model": "nope"}, "model"),
        ("/v1/async/completions", {**COMPLETION, "n": 10_000}, "n"),
    ],
)
def test_a_malformed_body_is_the_sync_routes_400_and_never_queued(
    idle: RunningServer, path: str, body: object, param: str | None
) -> None:
    depth = idle.metric("ember:queue_depth")
    answer = post(idle, path, body)
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["error"]["param"] == param
    sync = post(idle, path.replace("/async", ""), body)
    if param != "stream":
        assert (sync.status_code, sync.json()["error"]) == (answer.status_code,
                                                             answer.json()["error"])  # fmt: skip
    assert idle.metric("ember:queue_depth") == depth


def test_queue_metrics_and_readiness(idle: RunningServer) -> None:
    post(idle, "/v1/async/completions", COMPLETION)
    assert idle.metric("ember:queue_depth") >= 1
    assert idle.metric("ember:queue_pending_jobs") >= 1
    assert idle.metric("ember:queue_oldest_job_age_seconds") > 0
    assert idle.metric("ember:queue_reachable") == 1
    assert idle.ready()["status"] == "ready"


def test_prefer_wait_parsing() -> None:
    assert preferred_wait(None) is None
    assert preferred_wait("wait=5") == 5
    assert preferred_wait("respond-async, WAIT=2.5") == 2.5
    assert preferred_wait('wait="3"') == 3
    assert preferred_wait("wait=1000") == MAX_JOB_WAIT_SECONDS
    assert preferred_wait("wait=soon") is None
    assert preferred_wait("wait=-1") is None
    assert preferred_wait("return=minimal") is None


# -- with a worker --------------------------------------------------------------------------


@pytest.mark.slow
def test_submit_then_long_poll_until_completed(gateway: RunningServer, worker: Worker) -> None:
    answer = post(gateway, "/v1/async/chat/completions", CHAT)
    assert answer.status_code in (200, 202)
    job = completed(gateway, answer.json()["id"])
    assert job["status"] == "completed", job
    assert job["attempts"] == 1 and job["finished_at"] is not None
    result = job["result"]
    assert isinstance(result, dict) and result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["role"] == "assistant"
    assert result["usage"]["completion_tokens"] <= 4


@pytest.mark.slow
def test_prefer_wait_answers_200_with_the_result(gateway: RunningServer, worker: Worker) -> None:
    completed(gateway, post(gateway, "/v1/async/completions", COMPLETION).json()["id"])  # warm
    answer = post(gateway, "/v1/async/completions", COMPLETION, Prefer="wait=60")
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "completed" and job["result"]["object"] == "text_completion"
    assert answer.headers["location"] == f"/v1/jobs/{job['id']}"


@pytest.mark.slow
def test_a_job_the_engine_refuses_fails_with_its_error(
    gateway: RunningServer, worker: Worker
) -> None:
    """The gateway checks bodies but not the context (the engine's limits are the worker's):
    a prompt over it fails the job with the engine server's 400, once, and a sync request
    through the gateway gets that 400."""
    body = {**COMPLETION, "prompt": "word " * 400}  # the tiny model's context is 256
    job = completed(gateway, post(gateway, "/v1/async/completions", body).json()["id"])
    assert job["status"] == "failed" and job["attempts"] == 1 and "result" not in job
    error = job["error"]
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert set(error) == {"message", "type", "param", "code"}
    sync = post(gateway, "/v1/completions", body)
    assert sync.status_code == 400 and sync.json()["error"] == error


@pytest.mark.slow
def test_scale_from_zero(gateway: RunningServer, tmp_path: Path, nats: EmbeddedNats) -> None:
    """No worker: a submit is 202 and a sync request waits; a worker comes: both complete."""
    job_id = post(gateway, "/v1/async/completions", COMPLETION).json()["id"]
    assert job_of(gateway, job_id).json()["status"] == "queued"
    synced: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: synced.append(post(gateway, "/v1/chat/completions", CHAT))
    )
    waiting.start()
    time.sleep(1.0)
    assert not synced  # still waiting for a worker
    assert gateway.metric("ember:queue_depth") >= 2
    late = Worker(tmp_path, nats.url)
    try:
        assert completed(gateway, job_id)["status"] == "completed"
        waiting.join(120)
        assert synced and synced[0].status_code == 200, synced
        assert synced[0].json()["object"] == "chat.completion"
        assert synced[0].headers["x-ember-job-id"].startswith("job_")
        assert gateway.wait_metric("ember:queue_depth", 0) == 0
    finally:
        late.stop()


def test_a_sync_client_that_goes_away_cancels_its_job(gateway: RunningServer) -> None:
    depth = gateway.metric("ember:queue_depth")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/completions", json=COMPLETION, headers=ACME, timeout=1.0)
    # Its job was queued (no worker runs), then cancelled: it leaves the stream.
    assert gateway.wait_metric("ember:queue_depth", depth, timeout=30) == depth
    assert gateway.metric("ember:http_requests_total", endpoint="/v1/completions",
                          status="499") == 1  # fmt: skip


def test_gateway_serves_models(gateway: RunningServer) -> None:
    models = httpx.get(f"{gateway.url}/v1/models", headers=ACME, timeout=30).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert gateway.ready()["status"] == "ready"


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    with nats_server(tmp_path / "nats") as nats:
        server = start_server(tmp_path, "--model", TINY, "--nats", nats.url, "--max-queued-jobs",
                              "2", "--log-level", "warning", command="gateway")  # fmt: skip
        try:
            for _ in range(2):
                assert post(server, "/v1/async/completions", COMPLETION).status_code == 202
            full = post(server, "/v1/async/completions", COMPLETION)
            assert full.status_code == 429, full.text
            assert int(full.headers["retry-after"]) >= 1
            assert full.json()["error"]["code"] == "job_queue_full"
            assert server.metric("ember:queue_depth") == 2  # the refused one left nothing
        finally:
            assert server.stop() == 0, server.log.read_text()


@pytest.mark.slow
def test_queue_lost_and_back(tmp_path: Path) -> None:
    """nats-server stops: /ready turns false and submits answer 503; it restarts on the same
    port and store: both recover."""
    store = tmp_path / "nats"
    with nats_server(store) as first:
        server = start_server(tmp_path, "--model", TINY, "--nats", first.url, "--log-level",
                              "warning", command="gateway")  # fmt: skip
        assert post(server, "/v1/async/completions", COMPLETION).status_code == 202
    try:
        deadline = time.monotonic() + 30
        while server.get("/ready").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.get("/ready").json()["status"] == "queue_unavailable"
        answer = post(server, "/v1/async/completions", COMPLETION)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "queue_unavailable"
        with nats_server(store, port=first.port):
            server.wait_ready(60)
            assert post(server, "/v1/async/completions", COMPLETION).status_code == 202
    finally:
        server.process.kill()
        server.process.wait()


@pytest.mark.slow
def test_serve_queue_runs_jobs_with_an_embedded_nats_and_its_local_worker(tmp_path: Path) -> None:
    """`ember serve --queue` alone: nats-server started and stopped with it, jobs run beside
    the engine (under tenant keys: the local worker's requests need none)."""
    server = start_server(
        tmp_path, "--model", TINY, "--queue", "--nats-store", str(tmp_path / "store"),
        "--tenants", str(tenants_file(tmp_path)), "--metrics-public", "--log-level", "warning",
    )  # fmt: skip
    try:
        answer = post(server, "/v1/async/chat/completions", CHAT, Prefer="wait=60")
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["object"] == "chat.completion"
        job_id = post(server, "/v1/async/completions", COMPLETION).json()["id"]
        assert completed(server, job_id)["status"] == "completed"
        assert server.wait_metric("ember:queue_depth", 0) == 0
        # The jobs ran as their tenant's, in its class: not as the local worker's anonymous.
        ran_as = {"tenant": "acme", "class": "interactive"}
        assert server.metric("ember:tenant_generation_tokens_total", **ran_as) > 0
        assert server.metric("ember:tenant_generation_tokens_total", tenant="anonymous") == 0
        sync = post(server, "/v1/chat/completions", CHAT)  # the engine's own route still works
        assert sync.status_code == 200
    finally:
        assert server.stop() == 0, server.log.read_text()
    log = server.log.read_text()
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_cancel_a_running_job(tmp_path: Path) -> None:
    """The default model on the CPU is slow enough to catch a job running: cancelled, the
    worker stops it at its next heartbeat and stores nothing for it."""
    server = start_server(tmp_path, "--queue", "--nats-store", str(tmp_path / "store"),
                          "--log-level", "warning")  # fmt: skip
    try:
        body = {"model": RUNNING_MODEL, "prompt": "Tell me a long story.", "max_tokens": 4000,
                "ignore_eos": True}  # fmt: skip
        job_id = post(server, "/v1/async/completions", body).json()["id"]
        deadline = time.monotonic() + 120
        while job_of(server, job_id).json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job_of(server, job_id).json()["status"] == "in_progress"
        cancel = httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel", timeout=30)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
        # The engine lets it go within a heartbeat (a third of the ack wait).
        assert server.wait_metric("vllm:num_requests_running", 0, timeout=30,
                                  model_name=RUNNING_MODEL) == 0  # fmt: skip
        job = job_of(server, job_id).json()
        assert job["status"] == "cancelled" and "result" not in job
        assert server.wait_metric("ember:queue_depth", 0) == 0
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_an_unreachable_nats_at_start_is_an_error_naming_the_url() -> None:
    url = "nats://127.0.0.1:1"
    done = subprocess.run(
        [sys.executable, "-m", "ember.cli", "gateway", "--nats", url, "--model", TINY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"ember: error: the job queue at {url} is unavailable" in done.stderr
    assert "Traceback" not in done.stderr
