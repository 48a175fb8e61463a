"""Service classes and fair share against a real `ember serve --tenants FILE` with the real
`openai` client: an interactive tenant beside a batch flood keeps its TTFT, and two tenants
of one class with weights 1 and 3 get generated tokens 1:3. Four sequences run at a time, so
a modest flood fills the engine."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import openai
import pytest

from ember.serve.api_keys import key_hash
from tests.serve.running_server import MODEL, RunningServer, start_server

pytestmark = pytest.mark.slow

MAX_NUM_SEQS = 4
FLOOD_STREAMS = 2 * MAX_NUM_SEQS
FLOOD_TOKENS = 48
TENANTS = f"""
[tenants.flood]
keys = ["{key_hash("key-flood")}"]
class = "batch"

[tenants.chat]
keys = ["{key_hash("key-chat")}"]
class = "interactive"

[tenants.light]
keys = ["{key_hash("key-light")}"]
weight = 1

[tenants.heavy]
keys = ["{key_hash("key-heavy")}"]
weight = 3
"""


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("classes")
    path = directory / "tenants.toml"
    path.write_text(TENANTS)
    running = start_server(
        directory,
        "--tenants",
        str(path),
        "--max-num-seqs",
        str(MAX_NUM_SEQS),
        "--metrics-public",
        "--log-level",
        "warning",
    )
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def client(server: RunningServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


async def first_token_seconds(chat: openai.AsyncOpenAI, number: int) -> float:
    """One short stream of a ~130-token prompt, new to the prefix cache (its number first);
    the seconds from sending it to its first content. On the CPU a step of four sequences
    takes longer than a short prompt's whole TTFT alone, so a short prompt would measure the
    step, not the scheduling: this one's prefill takes a few chunks either way."""
    sent = time.perf_counter()
    stream = await chat.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"{number}. " + "Tell me about lighthouses. " * 20}],
        max_tokens=2,
        stream=True,
    )
    first: float | None = None
    async with stream:
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - sent
    assert first is not None
    return first


async def generate(tenant: openai.AsyncOpenAI, max_tokens: int, arrivals: list[float]) -> int:
    """One stream of exactly `max_tokens` (ignore_eos); each token's arrival time is appended
    to `arrivals` (logprobs give one entry per token, however the server groups them)."""
    stream = await tenant.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a story."}],
        max_tokens=max_tokens,
        stream=True,
        logprobs=True,
        extra_body={"ignore_eos": True},
    )
    tokens = 0
    async with stream:  # closed when the flood is cancelled, too
        async for chunk in stream:
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None and choice.logprobs and choice.logprobs.content:
                count = len(choice.logprobs.content)
                arrivals.extend([time.perf_counter()] * count)
                tokens += count
    return tokens


async def flood(tenant: openai.AsyncOpenAI, streams: int, max_tokens: int) -> list[float]:
    """`streams` clients sending one request after another until cancelled; the arrival time
    of every token."""
    arrivals: list[float] = []

    async def one_client() -> None:
        while True:
            assert await generate(tenant, max_tokens, arrivals) == max_tokens

    tasks = [asyncio.create_task(one_client()) for _ in range(streams)]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return arrivals


def test_an_interactive_tenant_keeps_its_ttft_beside_a_batch_flood(
    classes: RunningServer,
) -> None:
    """Alone, then beside twice the engine's slots of batch streams: the interactive tenant's median
    TTFT at most doubles (it preempts a batch sequence rather than waiting for a slot); the
    batch tenant still completes requests; no KV block is left in use afterwards."""

    async def scenario() -> tuple[list[float], list[float], int, int]:
        chat, bulk = client(classes, "key-chat"), client(classes, "key-flood")
        alone = [await first_token_seconds(chat, i) for i in range(5)]
        arrivals: list[float] = []
        completed = 0

        async def flood_once() -> None:
            nonlocal completed
            await generate(bulk, FLOOD_TOKENS, arrivals)
            completed += 1

        flooding = [asyncio.create_task(flood_once()) for _ in range(FLOOD_STREAMS)]
        while len(arrivals) < 2 * MAX_NUM_SEQS:  # the engine is full of batch streams
            await asyncio.sleep(0.05)
        beside = [await first_token_seconds(chat, i) for i in range(5, 10)]
        during = completed
        await asyncio.gather(*flooding)
        await chat.close()
        await bulk.close()
        return alone, beside, during, completed

    alone, beside, during, completed = asyncio.run(scenario())
    print(f"interactive TTFT alone {alone}, beside the flood {beside}")
    assert statistics.median(beside) <= 2 * statistics.median(alone), (alone, beside)
    assert completed == FLOOD_STREAMS, (during, completed)
    assert classes.metric("ember:tenant_requests_total", tenant="flood", outcome="served") == (
        FLOOD_STREAMS
    )
    assert classes.wait_metric("vllm:kv_cache_usage_perc", 0.0) == 0.0
    assert classes.wait_metric("vllm:num_requests_running", 0.0) == 0.0


def test_weights_share_generated_tokens(classes: RunningServer) -> None:
    """Two tenants of one class, weights 1 and 3, each with twice the engine's slots of
    streams of 16 tokens: over a window while both are saturated, their tokens are 1:3
    within 10 %."""
    warmup, window = 3.0, 12.0

    async def scenario() -> tuple[list[float], list[float], float]:
        light_client, heavy_client = client(classes, "key-light"), client(classes, "key-heavy")
        light = asyncio.create_task(flood(light_client, 2 * MAX_NUM_SEQS, 16))
        heavy = asyncio.create_task(flood(heavy_client, 2 * MAX_NUM_SEQS, 16))
        started = time.perf_counter()
        await asyncio.sleep(warmup + window)
        light.cancel()
        heavy.cancel()
        arrivals = await light, await heavy
        await light_client.close()
        await heavy_client.close()
        return *arrivals, started

    light, heavy, started = asyncio.run(scenario())
    opens, closes = started + warmup, started + warmup + window
    light_tokens = sum(opens <= t < closes for t in light)
    heavy_tokens = sum(opens <= t < closes for t in heavy)
    ratio = heavy_tokens / light_tokens
    print(f"tokens in {window} s: light {light_tokens}, heavy {heavy_tokens}, ratio {ratio:.3f}")
    assert abs(ratio - 3) <= 0.3, (light_tokens, heavy_tokens)
    assert classes.wait_metric("vllm:kv_cache_usage_perc", 0.0) == 0.0
