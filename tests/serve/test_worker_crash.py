"""`kill -9` of the engine worker mid-stream: its requests fail cleanly, the server recovers.

The server runs with room for two running sequences and one waiting, so the same server also
shows admission control: the fourth concurrent request gets 503 `queue_full` with Retry-After.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.running_server import MODEL, RunningServer, start_server


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_dir: Path = tmp_path_factory.mktemp("crash")
    running = start_server(log_dir, "--max-num-seqs", "2", "--max-queued-requests", "1")
    yield running
    assert running.stop() == 0, running.log.read_text()


class StreamInBackground:
    """A long streaming completion read on a thread; remembers how it ended."""

    def __init__(self, server: RunningServer) -> None:
        self.first_token = threading.Event()
        self.error: Exception | None = None
        self.finish_reason: str | None = None
        self._client = server.client()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stream = self._client.completions.create(
                model=MODEL,
                prompt="Write a long story.",
                max_tokens=3000,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    self.first_token.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish_reason = chunk.choices[0].finish_reason
        except Exception as error:
            self.error = error
        finally:
            self._client.close()  # its pooled connection, not left to the garbage collector
            self.first_token.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"


@pytest.mark.slow  # its own server, a killed worker and a restart
def test_full_queue_is_503_then_killed_worker_fails_its_requests_and_recovers(
    small_server: RunningServer,
) -> None:
    server = small_server
    running = [StreamInBackground(server) for _ in range(2)]
    for stream in running:
        assert stream.first_token.wait(300) and stream.error is None, stream.error
    queued = StreamInBackground(server)  # both engine slots are taken: this one waits
    deadline = time.monotonic() + 60
    while server.metric("vllm:num_requests_waiting") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)

    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    refused = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1

    old_pid = server.ready()["worker_pid"]
    assert isinstance(old_pid, int) and old_pid != server.process.pid
    os.kill(old_pid, signal.SIGKILL)

    for stream in [*running, queued]:
        stream.join(60)
        assert isinstance(stream.error, openai.APIError), stream.error
        assert "engine worker killed by SIGKILL" in str(stream.error)
        assert stream.finish_reason is None

    assert server.get("/health").status_code == 200
    if server.get("/ready").status_code == 503:  # unless the new worker is already up
        with server.client() as client, pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["Retry-After"]

    server.wait_ready()
    ready = server.ready()
    assert ready["worker_pid"] not in (None, old_pid) and ready["worker_restarts"] == 1
    assert server.metric("ember:worker_restarts_total") == 1
    with server.client() as client:
        response = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=2, temperature=0
        )
    assert response.choices[0].text and response.choices[0].finish_reason == "length"
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0
