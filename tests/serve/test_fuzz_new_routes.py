"""Malformed and edge-case bodies on `/v1/responses`, `/tokenize` and `/detokenize`: each gets
a 2xx or a 4xx in OpenAI's shape, never a 500 (the bodies and values of `test_fuzz`)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httpx

from tests.serve.running_server import MODEL, RunningServer
from tests.serve.test_fuzz import _MESSAGE_SHAPES, _RAW_BODIES, _WEIRD_VALUES

_INPUT_SHAPES: list[object] = [
    *_MESSAGE_SHAPES,
    [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    [{"type": "function_call", "name": "f", "arguments": "{}"}],
    [{"role": "user", "content": [{"type": "input_text"}]}],
    [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
]
_FIELDS = {
    "/v1/responses": [
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream",
        "store", "previous_response_id", "user", "metadata", "text", "tools", "tool_choice",
        "reasoning", "include", "top_logprobs", "truncation", "background",
    ],
    "/tokenize": ["model", "prompt", "messages", "add_generation_prompt", "add_special_tokens",
                  "return_token_strs"],
    "/detokenize": ["model", "tokens"],
}  # fmt: skip
_BASES: dict[str, dict[str, object]] = {
    "/v1/responses": {"model": MODEL, "input": "Hi", "max_output_tokens": 1},
    "/tokenize": {"model": MODEL, "prompt": "Hi"},
    "/detokenize": {"model": MODEL, "tokens": [19556]},
}


def _unbounded(path: str, body: dict[str, object]) -> bool:
    """A response with no valid small `max_output_tokens` would generate up to the context."""
    limit = body.get("max_output_tokens")
    return path == "/v1/responses" and limit is None


def fuzz_cases(seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    cases: list[tuple[str, bytes]] = []
    for path, fields in _FIELDS.items():
        for field in fields:
            for value in rng.sample(_WEIRD_VALUES, 10):
                body = {**_BASES[path], field: value}
                if not _unbounded(path, body):
                    cases.append((path, json.dumps(body).encode()))
            body = dict(_BASES[path])
            body.pop(field, None)
            if not _unbounded(path, body):
                cases.append((path, json.dumps(body).encode()))
        for raw in _RAW_BODIES:
            cases.append((path, raw))
    for shape in _INPUT_SHAPES:
        cases.append(
            ("/v1/responses", json.dumps({**_BASES["/v1/responses"], "input": shape}).encode())
        )
        cases.append(("/tokenize", json.dumps({"model": MODEL, "messages": shape}).encode()))
    return cases


def test_fuzzed_bodies_never_get_a_server_error(server: RunningServer) -> None:
    cases = fuzz_cases()
    assert len(cases) >= 300

    async def send_all() -> list[tuple[str, bytes, httpx.Response]]:
        slots = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:

            async def send(path: str, body: bytes) -> tuple[str, bytes, httpx.Response]:
                async with slots:
                    headers = {"Content-Type": "application/json"}
                    return path, body, await client.post(path, content=body, headers=headers)

            return await asyncio.gather(*(send(p, b) for p, b in cases))

    statuses: Counter[int] = Counter()
    for path, body, response in asyncio.run(send_all()):
        statuses[response.status_code] += 1
        context = f"{path} {body[:200]!r} -> {response.status_code} {response.text[:300]}"
        assert response.status_code in (200, 400, 404, 413), context
        assert "x-request-id" in response.headers, context
        if response.headers["content-type"].startswith("text/event-stream"):
            assert "event: response.completed" in response.text or (
                "event: response.incomplete" in response.text
            ), context
        elif response.status_code != 200:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, context
            assert "Traceback" not in error["message"], context
    assert statuses[400] > 100 and statuses[200] > 0
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0
