"""`"stream": true` through `ember gateway`: the worker publishes a job's chunks as it generates
and the gateway relays them as `ember serve` streams them. Real processes (nats-server, an
`ember gateway`, `ember worker`s, an `ember serve` to compare with) on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from ember.queue.nats_server import EmbeddedNats
from tests.serve.running_server import RunningServer, start_server
from tests.serve.test_async_api import ACME, CHAT, COMPLETION, MODEL, TINY, Worker, nats_server
from tests.serve.test_async_api import tenants_file as write_tenants_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stream_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with nats_server(tmp_path_factory.mktemp("stream-nats")) as server:
        yield server


@pytest.fixture(scope="module")
def stream_gateway(
    tmp_path_factory: pytest.TempPathFactory, stream_nats: EmbeddedNats
) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("stream-gateway")
    running = start_server(
        directory, "--model", TINY, "--nats", stream_nats.url, "--tenants",
        str(write_tenants_file(directory)), "--metrics-public", "--log-level", "warning",
        command="gateway",
    )  # fmt: skip
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


@pytest.fixture(scope="module")
def stream_worker(
    tmp_path_factory: pytest.TempPathFactory, stream_nats: EmbeddedNats
) -> Iterator[Worker]:
    running = Worker(tmp_path_factory.mktemp("stream-worker"), stream_nats.url)
    yield running
    running.stop()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`ember serve` on the same model: the stream the gateway's must match."""
    running = start_server(tmp_path_factory.mktemp("plain"), "--model", TINY,
                           "--log-level", "warning")  # fmt: skip
    yield running
    assert running.stop() == 0, running.log.read_text()


def sse(server: RunningServer, path: str, body: dict[str, object]) -> tuple[httpx.Response, list]:
    """The response and its events' JSON (`[DONE]` as the string)."""
    with httpx.stream("POST", server.url + path, json=body, headers=ACME, timeout=120) as answer:
        text = answer.read().decode()
    events: list[object] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return answer, events


def shape(events: list) -> list[object]:
    """The events without what differs between two servers' answers (ids, times, names)."""
    kept: list[object] = []
    for found in events:
        if isinstance(found, dict):
            found = {
                k: v for k, v in found.items() if k not in ("id", "created", "system_fingerprint")
            }
        kept.append(found)
    return kept


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT),
                                            ("/v1/completions", COMPLETION)])  # fmt: skip
def test_the_gateways_stream_is_ember_serves(
    stream_gateway: RunningServer,
    stream_worker: Worker,
    plain: RunningServer,
    path: str,
    body: dict[str, object],
    include_usage: bool,
) -> None:
    request = {**body, "stream": True, "temperature": 0, "max_tokens": 12, "n": 2}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    relayed, got = sse(stream_gateway, path, request)
    direct, expected = sse(plain, path, request)
    assert relayed.status_code == direct.status_code == 200
    assert relayed.headers["content-type"].startswith("text/event-stream")
    assert relayed.headers["x-ember-job-id"].startswith("job_")
    assert got[-1] == "[DONE]" and got.count("[DONE]") == 1
    assert len({event["id"] for event in got[:-1]}) == 1  # one delivery's stream

    def text(events: list) -> dict[int, str]:
        out: dict[int, str] = {}
        for event in events[:-1]:
            for choice in event["choices"]:
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                out[choice["index"]] = out.get(choice["index"], "") + piece
        return out

    assert text(got) == text(expected) and all(text(got).values())
    # Chunk for chunk where pacing cannot differ: the same kinds of chunk (by their keys),
    # the roles first for chat, the finishes, the usage chunk last or no `usage` key at all.
    assert {frozenset(e) for e in got[:-1]} == {frozenset(e) for e in expected[:-1]}
    if "chat" in path:
        assert shape(got[:2]) == shape(expected[:2])

    def finishes(events: list) -> dict[int, str]:
        return {c["index"]: c["finish_reason"] for e in events[:-1] for c in e["choices"]
                if c["finish_reason"] is not None}  # fmt: skip

    assert finishes(got) == finishes(expected) and len(finishes(got)) == 2
    if include_usage:
        assert got[-2]["choices"] == [] and got[-2]["usage"] == expected[-2]["usage"]
    else:
        assert all("usage" not in event for event in got[:-1])


def test_an_openai_client_streams_through_the_gateway(
    stream_gateway: RunningServer, stream_worker: Worker
) -> None:
    client = stream_gateway.client()
    client.api_key = "key-acme"
    pieces, finishes, usage = [], [], None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}, temperature=0,
    ):  # fmt: skip
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    assert "".join(pieces) and finishes in (["length"], ["stop"])
    assert usage is not None and 0 < usage.completion_tokens <= 8
    completion = client.completions.create(model=MODEL, prompt="once upon", max_tokens=5,
                                           stream=True)  # fmt: skip
    texts = [choice.text for chunk in completion for choice in chunk.choices]
    assert "".join(texts)
