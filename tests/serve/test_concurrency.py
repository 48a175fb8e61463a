"""Many concurrent streams, and clients that hang up: KV blocks must all come back."""

from __future__ import annotations

import asyncio

import httpx

from tests.serve.running_server import MODEL, RunningServer


def test_64_concurrent_streams_all_complete_and_free_their_blocks(server: RunningServer) -> None:
    client = server.async_client()

    async def one(index: int) -> tuple[str, str | None, int]:
        stream = await client.completions.create(
            model=MODEL,
            prompt=f"Fact {index}:",
            max_tokens=3,
            temperature=0.7,
            seed=index,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, finish, tokens = "", None, 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, finish, tokens

    async def everyone() -> list[tuple[str, str | None, int]]:
        async with client:  # closes its 64 connections before asyncio.run closes the loop
            return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(everyone())
    assert [finish for _, finish, _ in results] == ["length"] * 64
    assert [tokens for _, _, tokens in results] == [3] * 64
    assert all(text for text, _, _ in results)
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("vllm:num_requests_waiting") == 0


def test_clients_that_disconnect_mid_stream_free_their_blocks(server: RunningServer) -> None:
    aborted_before = server.metric("vllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "prompt": "Write a very long essay about the sea.",
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }

    async def read_one_chunk_and_hang_up(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"text":""' not in line:
                    return  # leaving the block closes the connection mid-stream

    async def hang_up_all() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            await asyncio.gather(*(read_one_chunk_and_hang_up(client) for _ in range(4)))

    asyncio.run(hang_up_all())
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0
    assert server.metric("vllm:num_requests_running") == 0
    aborted = server.metric("vllm:request_success_total", finished_reason="abort")
    assert aborted - aborted_before == 4
