"""How much of a streaming benchmark is the client: the same load from three HTTP clients.

A real `ember serve` gets N identical streaming completions (`ignore_eos`, `--max-tokens`
each) at once, over connections opened beforehand, from each of: httpx (what `ember bench
serve` used until 2026-11-24), aiohttp (what it uses now) and raw asyncio sockets writing one
prebuilt HTTP/1.1 request and scanning the chunked reply for `data: [DONE]` (the least a
client can do). Per client and N: output tok/s, and time to the first SSE event, min / median
/ max over the N streams. The server's own time to first token (from its handler's start,
`vllm:time_to_first_token_seconds` on /metrics) shows what the client adds before the server
sees a request.

    python scripts/compare_load_clients.py --device cuda --model model.gguf --streams 1,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
from bench_serve_overhead import PROMPT, start_server

Stream = Callable[[], Awaitable[float]]  # one request; returns seconds to its first SSE event


def body(model: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }


async def with_httpx(url: str, request: dict[str, object], n: int) -> list[float]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> float:
            started, first = time.perf_counter(), 0.0
            async with client.stream("POST", "/v1/completions", json=request) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        first = first or time.perf_counter() - started
            return first

        return await measure(one, n)


async def with_aiohttp(url: str, request: dict[str, object], n: int) -> list[float]:
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one() -> float:
            started, first = time.perf_counter(), 0.0
            async with session.post("/v1/completions", json=request) as response:
                async for line in response.content:
                    if line.startswith(b"data:"):
                        first = first or time.perf_counter() - started
            return first

        return await measure(one, n)


async def with_sockets(url: str, request: dict[str, object], n: int) -> list[float]:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(request).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    message = head.encode() + payload
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(n)]
    free = list(connections)

    async def one() -> float:
        reader, writer = free.pop()
        started, first = time.perf_counter(), 0.0
        writer.write(message)
        reply = b""
        while not reply.endswith(b"0\r\n\r\n") or b"data: [DONE]" not in reply:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            if not first and b"data:" in data:
                first = time.perf_counter() - started
            reply += data
        free.append((reader, writer))
        return first

    try:
        return await measure(one, n)
    finally:
        for _, writer in connections:
            writer.close()


async def measure(one: Stream, n: int) -> list[float]:
    """A warm-up round (connections opened), then the measured round; the measured round's
    wall time first, then each stream's time to first event."""
    await asyncio.gather(*(one() for _ in range(n)))
    started = time.perf_counter()
    firsts = await asyncio.gather(*(one() for _ in range(n)))
    return [time.perf_counter() - started, *firsts]


def server_ttft(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=30).text

    def value(suffix: str) -> float:
        found = re.search(rf"^vllm:time_to_first_token_seconds_{suffix}\S* (\S+)", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("sum"), value("count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,16,64", help="comma-separated stream counts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", help="GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()

    options = ["--device", args.device] + (["--model", args.model] if args.model else [])
    server, url = start_server(Path(tempfile.mkdtemp()) / "ember-serve.log", options)
    clients = {"httpx": with_httpx, "aiohttp": with_aiohttp, "sockets": with_sockets}
    try:
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        request = body(model, args.max_tokens)
        print(f"{'client':<8} {'streams':>7} {'tok/s':>9} {'first event min/med/max ms':>27}")
        for n in (int(s) for s in args.streams.split(",")):
            for name, client in clients.items():
                before_sum, before_count = server_ttft(url)
                wall, *firsts = asyncio.run(client(url, request, n))
                after_sum, after_count = server_ttft(url)
                # Both rounds' requests are counted; the warm-up's are as many as the measured.
                server_ms = 1e3 * (after_sum - before_sum) / max(1.0, after_count - before_count)
                ms = sorted(1e3 * f for f in firsts)
                print(
                    f"{name:<8} {n:>7} {n * args.max_tokens / wall:>9,.0f} "
                    f"{ms[0]:>9.1f} {statistics.median(ms):>8.1f} {ms[-1]:>8.1f}"
                    f"   (server TTFT mean {server_ms:.1f} ms)",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(120)


if __name__ == "__main__":
    main()
