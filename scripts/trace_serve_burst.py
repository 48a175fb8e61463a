"""Where a stream's first token goes: a per-request timeline of a burst through `ember serve`.

A real server (real worker) runs in a subprocess with timestamps patched in at five places,
and N raw-socket clients send the same streaming completion at once (three bursts; the last
is reported). Per request, in milliseconds:

- send → ASGI: until the server's event loop dispatches the request to the app;
- ASGI → handler, handler → arrival: Starlette's routing; parsing and tokenizing;
- arrival → first token: the request to the worker, its prefill, the token back;
- first token → first chunk: until the stream's handler yields its first SSE chunk;
- first chunk → client, and send → first event (TTFE) and the whole request (e2e).

`time.perf_counter` is CLOCK_MONOTONIC on Linux, shared by the processes of one host.

    python scripts/trace_serve_burst.py --device cuda --model model.gguf --streams 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
from bench_serve_overhead import PROMPT, free_port, recorded_by, wait_until_ready

HOPS = (
    ("send → ASGI", "send", "asgi"),
    ("ASGI → handler", "asgi", "handler"),
    ("handler → arrival", "handler", "arrival"),
    ("arrival → first token", "arrival", "token"),
    ("first token → first chunk", "token", "chunk"),
    ("first chunk → client", "chunk", "first"),
    ("send → first event", "send", "first"),
    ("send → done", "send", "done"),
)


def serve(port: int, model: str | None, device: str, dump: str) -> None:
    """The server subprocess: `ember serve` with the timestamps patched in."""
    from ember.engine.config import EngineConfig
    from ember.serve import engine_client, generation_runner, openai_routes
    from ember.serve import server as server_module
    from ember.serve.config import ServerConfig

    marks: dict[str, dict[str, float]] = {}  # request id -> stamp name -> perf_counter
    entered: contextvars.ContextVar[tuple[float, float]] = contextvars.ContextVar("entered")
    routes, runner = openai_routes.OpenAIRoutes, generation_runner.GenerationRunner
    completions, start, events = routes.completions, runner.start, routes._events

    async def timed_completions(self: Any, request: Any) -> Any:
        entered.set((request.scope["ember_asgi"], time.perf_counter()))
        return await completions(self, request)

    def timed_start(self: Any, *args: Any) -> Any:
        generation = start(self, *args)
        asgi, handler = entered.get()
        arrival = time.perf_counter() - (time.monotonic() - generation.arrival_time)
        marks[generation.response_id] = {"asgi": asgi, "handler": handler, "arrival": arrival}
        return generation

    async def timed_events(self: Any, generation: Any, *args: Any) -> AsyncGenerator[bytes, None]:
        async for chunk in events(self, generation, *args):
            marks.get(generation.response_id, {}).setdefault("chunk", time.perf_counter())
            yield chunk

    on_step = engine_client.EngineClient._on_step

    def timed_on_step(self: Any, report: Any) -> None:
        waiting = [c for c in self._choices.values() if c.first_token_time is None]
        on_step(self, report)
        now = time.perf_counter()
        for choice in waiting:  # still here or, finished in this step, gone from the client
            if choice.first_token_time is not None:
                marks.get(choice.owner.response_id, {}).setdefault("token", now)

    build_app = server_module.build_app

    def timed_build_app(*args: Any, **kwargs: Any) -> Any:
        app = build_app(*args, **kwargs)

        async def stamped(scope: Any, receive: Any, send: Any) -> None:
            scope["ember_asgi"] = time.perf_counter()
            await app(scope, receive, send)

        return stamped

    routes.completions = timed_completions  # type: ignore[method-assign]
    runner.start = timed_start  # type: ignore[method-assign]
    routes._events = timed_events  # type: ignore[method-assign]
    engine_client.EngineClient._on_step = timed_on_step  # type: ignore[method-assign]
    server_module.build_app = timed_build_app  # type: ignore[assignment]

    def write_marks(signum: int, frame: Any) -> None:
        Path(dump).write_text(json.dumps(marks))

    signal.signal(signal.SIGUSR1, write_marks)
    engine = EngineConfig(model=model, device=device)
    server_module.run_server(
        ServerConfig(engine=engine, port=port, log_level="warning", request_timeout=None)
    )


async def burst(url: str, model: str, streams: int, max_tokens: int) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(
        {
            "model": model,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    message = head.encode() + payload
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(streams)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        stamps: dict[str, Any] = {"send": time.perf_counter()}
        writer.write(message)
        reply = b""
        while not (reply.endswith(b"0\r\n\r\n") and b"data: [DONE]" in reply):
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            if "first" not in stamps and b"data:" in data:
                stamps["first"] = time.perf_counter()
                line = data[data.index(b"data:") + 5 :].split(b"\n", 1)[0]
                stamps["id"] = json.loads(line)["id"]
            reply += data
        stamps["done"] = time.perf_counter()
        return stamps

    try:
        for _ in range(3):
            results = await asyncio.gather(*(one(r, w) for r, w in connections))
    finally:
        for _, writer in connections:
            writer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", help="GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DUMP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.model, args.device, args.serve[1])
        return

    port, dump = free_port(), tempfile.mktemp(suffix=".json")
    log = Path(tempfile.mkdtemp()) / "ember-serve.log"
    command = [sys.executable, __file__, "--serve", str(port), dump, "--device", args.device]
    command += [] if args.model is None else ["--model", args.model]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server, url = wait_until_ready(process, f"http://127.0.0.1:{port}", log, 600)
    try:
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        results = asyncio.run(burst(url, model, args.streams, args.max_tokens))
        marks = recorded_by(server, dump)
    finally:
        server.terminate()
        server.wait(120)
    rows = [{**marks[r["id"]], **r} for r in results]
    print(f"{args.streams} streams x {args.max_tokens} tokens, last of 3 bursts; ms")
    print(f"{'hop':<26} {'min':>8} {'median':>8} {'max':>8}")
    for name, start, end in HOPS:
        values = sorted(1e3 * (row[end] - row[start]) for row in rows)
        print(f"{name:<26} {values[0]:>8.2f} {statistics.median(values):>8.2f} {values[-1]:>8.2f}")


if __name__ == "__main__":
    main()
