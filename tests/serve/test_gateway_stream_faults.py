"""Faults of a stream through `ember gateway`: a client that leaves, a worker that dies. Their own
queue and gateway, with only the test's slow workers (`--max-num-seqs 1`) reading it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.queue.job_store import JobQueue
from ember.queue.layout import QueueSettings
from ember.queue.nats_server import EmbeddedNats
from tests.serve.running_server import RunningServer, start_server
from tests.serve.test_async_api import ACME, CHAT, TINY, Worker, nats_server
from tests.serve.test_async_api import tenants_file as write_tenants_file
from tests.serve.test_gateway_stream import sse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stream_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with nats_server(tmp_path_factory.mktemp("faults-nats")) as server:
        yield server


@pytest.fixture(scope="module")
def stream_gateway(
    tmp_path_factory: pytest.TempPathFactory, stream_nats: EmbeddedNats
) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("faults-gateway")
    running = start_server(
        directory, "--model", TINY, "--nats", stream_nats.url, "--tenants",
        str(write_tenants_file(directory)), "--log-level", "warning", command="gateway",
    )  # fmt: skip
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def stream_lines(server: RunningServer, body: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(the job id, each SSE data line) of a chat stream, as it arrives."""
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=ACME,
                      timeout=120) as answer:  # fmt: skip
        assert answer.status_code == 200, answer.read()
        job_id = answer.headers["x-ember-job-id"]
        for line in answer.iter_lines():
            if line.startswith("data: "):
                yield job_id, line[len("data: ") :]


def job_status(server: RunningServer, job_id: str) -> str:
    found = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=ACME, timeout=30).json()
    return str(found["status"])


# Several seconds on the tiny model with one sequence at a time (`--max-num-seqs 1`).
LONG = {**CHAT, "stream": True, "max_tokens": 200, "ignore_eos": True, "n": 16}


def wait_status(server: RunningServer, job_id: str, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (status := job_status(server, job_id)) != wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {status}, not {wanted}"
        time.sleep(0.1)


def test_a_client_that_leaves_mid_stream_cancels_its_job(
    tmp_path: Path, stream_gateway: RunningServer, stream_nats: EmbeddedNats
) -> None:
    slow = Worker(tmp_path, stream_nats.url, "--max-num-seqs", "1")
    try:
        lines = stream_lines(stream_gateway, LONG)
        job_id, first = next(lines)
        assert json.loads(first)["choices"][0]["delta"]["role"] == "assistant"
        next(lines)
        lines.close()  # the connection closes mid-stream
        wait_status(stream_gateway, job_id, "cancelled")
        # The worker drops it at its next heartbeat and takes the next job.
        relayed, events = sse(stream_gateway, "/v1/chat/completions", {**CHAT, "stream": True})
        assert relayed.status_code == 200 and events[-1] == "[DONE]"
    finally:
        slow.stop()
    assert "Traceback" not in slow.log.read_text(), slow.log.read_text()


def test_a_worker_that_dies_mid_stream_ends_it_with_an_error_and_the_redelivery_is_cancelled(
    tmp_path: Path, stream_gateway: RunningServer, stream_nats: EmbeddedNats
) -> None:
    """The stream had begun: the second delivery cannot continue it. The client gets an
    error event and [DONE]; the job is cancelled rather than run for nobody."""

    async def short_ack_wait() -> None:
        # Whoever connects without adopting sets the queue's settings (the gateway did so at
        # its start): a short ack wait makes the redelivery come in seconds.
        queue = await JobQueue.connect(stream_nats.url, QueueSettings(ack_wait_seconds=2.0))
        await queue.close()

    asyncio.run(short_ack_wait())
    dying = Worker(tmp_path, stream_nats.url, "--max-num-seqs", "1")
    second: Worker | None = None
    try:
        lines = stream_lines(stream_gateway, LONG)
        job_id, _ = next(lines)
        next(lines)
        dying.process.kill()
        dying.process.wait()
        second = Worker(tmp_path, stream_nats.url, "--max-num-seqs", "1")
        rest = [line for _, line in lines]
        assert rest[-1] == "[DONE]"
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "stream_interrupted" and "delivered again" in error["message"]
        wait_status(stream_gateway, job_id, "cancelled")
    finally:
        dying.stop()
        if second is not None:
            second.stop()
