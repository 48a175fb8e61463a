"""`cache_salt`: requests share cached prompt prefixes only within one salt."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.serve.running_server import MODEL, RunningServer


def prefix_cache_hits(server: RunningServer) -> float:
    text = server.get("/metrics").text
    found = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def test_prefix_cache_hits_only_within_a_salt(server: RunningServer) -> None:
    client = server.client()
    prompt = f"{uuid.uuid4()} " + "A lighthouse keeper wrote in his log every night. " * 12

    def complete(salt: str | None) -> float:
        before = prefix_cache_hits(server)
        extra = {} if salt is None else {"cache_salt": salt}
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body=extra)
        return prefix_cache_hits(server) - before

    assert complete("tenant-a") == 0
    assert complete("tenant-b") == 0  # the same prompt, another salt: nothing to learn
    assert complete(None) == 0
    assert complete("tenant-a") >= 100  # the same salt: its blocks are reused


def test_a_bad_cache_salt_is_a_400(server: RunningServer) -> None:
    for salt in ("", "x" * 257, 5):
        reply = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 1, "cache_salt": salt},
            timeout=30,
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "cache_salt"
