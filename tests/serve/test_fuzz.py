"""Hundreds of malformed and edge-case bodies: every one gets a 2xx or a 4xx, never a 500.

The bodies are generated deterministically: each mutates one field of a valid request (wrong
type, out of range, absurd size, wrong shape) or breaks the body itself (bad JSON, bad UTF-8,
deep nesting). A valid request here is kept cheap (max_tokens <= 2) so generating is quick.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httpx

from tests.serve.running_server import MODEL, RunningServer

_WEIRD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    2.5,
    -0.0,
    1e308,
    -1e308,
    2**64,
    -(2**63),
    "",
    "1",
    "nan",
    "\u0000",
    "\ud83d\ude00",
    [],
    [1],
    ["a"],
    [[]],
    [None],
    {},
    {"a": 1},
    {"type": "json_object"},
    "x" * 10_000,
]

_CHAT_FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed",
    "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs", "user", "logit_bias",
    "response_format", "tools", "tool_choice", "stop_token_ids", "ignore_eos",
    "request_timeout", "skip_special_tokens", "cache_salt",
]  # fmt: skip
_COMPLETION_FIELDS = [
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "logprobs", "echo",
    "suffix", "best_of", "stop", "seed",
]  # fmt: skip

_MESSAGE_SHAPES: list[object] = [
    [{"role": "user"}],
    [{"content": "hi"}],
    [{"role": "wizard", "content": "hi"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": 3}]}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    [{"role": "user", "content": [5]}],
    [{"role": "assistant", "content": "hi"}, {"role": "assistant", "content": "again"}],
    [{"role": "system", "content": "be brief"}],
    [{"role": "user", "content": "<|im_end|><|im_start|>system"}],
    ["hi"],
    "hi",
]

_PROMPT_SHAPES: list[object] = [
    [-1],
    [10**9],
    [1, "a"],
    [[1, 2], "a"],
    [[]],
    [True],
    [1.5],
    [["a"]],
    ["a", 1],
    "<|endoftext|>",
    "\x00\x01\x02",
]

_RAW_BODIES: list[bytes] = [
    b"",
    b" ",
    b"{",
    b"}",
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"{'model': 'x'}",
    b'{"model": NaN}',
    b'{"model": Infinity, "prompt": "x"}',
    b"\xff\xfe\xfd",
    b'{"model": "\xff"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"model": "' + MODEL.encode() + b'", "prompt": "hi", "max_tokens": 1,}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "hi", "max_tokens": 1, "max_tokens": 0}',
    # Issue 15: each of these was a 500.
    b'{"model": "m", "prompt": "hi", "max_tokens": 1' + b"0" * 4400 + b"}",
    b'{"model": "m", "prompt": "hi", "temperature": 1' + b"0" * 400 + b"}",
    b'{"model": "m", "prompt": "hi", "request_timeout": 1' + b"0" * 400 + b"}",
    b'{"model": "\\ud800", "prompt": "hi"}',
    b'{"model": "m", "prompt": "\\ud800", "messages": [{"role": "user", "content": "\\udc00"}]}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": ["\\ud800"], "max_tokens": 1}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": '
    b'[{"type": "text", "text": "\\udbff"}]}], "prompt": "x", "max_tokens": 1}',
]


def _chat_base() -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 1,
        "request_timeout": 120,
    }


def _completion_base() -> dict[str, object]:
    return {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "request_timeout": 120}


def _cheap(body: dict[str, object]) -> bool:
    """Mutations that leave a valid request must not ask for a long generation."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    return isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 2


def _encode(body: dict[str, object]) -> bytes:
    if not _cheap(body) and "request_timeout" in body:
        body["request_timeout"] = 3  # no token limit left: the deadline ends the generation
    return json.dumps(body).encode()


def fuzz_cases(seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    cases: list[tuple[str, bytes]] = []
    for path, base, fields in (
        ("/v1/chat/completions", _chat_base, _CHAT_FIELDS),
        ("/v1/completions", _completion_base, _COMPLETION_FIELDS),
    ):
        for field in fields:
            for value in rng.sample(_WEIRD_VALUES, 10):
                body = base()
                body[field] = value
                cases.append((path, _encode(body)))
            body = base()
            body.pop(field, None)
            cases.append((path, _encode(body)))
    for shape in _MESSAGE_SHAPES:
        body = _chat_base()
        body["messages"] = shape
        cases.append(("/v1/chat/completions", json.dumps(body).encode()))
    for shape in _PROMPT_SHAPES:
        body = _completion_base()
        body["prompt"] = shape
        cases.append(("/v1/completions", json.dumps(body).encode()))
    for raw in _RAW_BODIES:
        cases.append(("/v1/chat/completions", raw))
        cases.append(("/v1/completions", raw))
    return cases


def test_fuzzed_bodies_never_get_a_server_error(server: RunningServer) -> None:
    cases = fuzz_cases()
    assert len(cases) >= 500

    async def send_all() -> list[tuple[str, bytes, httpx.Response]]:
        # Many at once: the valid ones then share engine steps instead of queueing for them.
        slots = asyncio.Semaphore(64)
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
        # 504: a mutation that drops max_tokens asks for the whole context; its deadline ends it.
        assert response.status_code in (200, 400, 404, 413, 504), context
        if response.headers["content-type"].startswith("text/event-stream"):
            assert response.text.endswith("data: [DONE]\n\n"), context
        elif response.status_code == 200:
            assert response.json()["choices"], context
        else:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, context
            assert "Traceback" not in error["message"], context
    assert statuses[400] > 100 and statuses[200] > 0
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0
