"""Server overhead: output tok/s through `ember serve` vs the engine's own on the same work.

The work: N identical-length streaming completions (same prompt, greedy, `ignore_eos`, exactly
`--max-tokens` each) started together. "engine" runs them on an `LLMEngine` in this process
(its normal path, detokenizing); "server" sends them to a real `ember serve` process (engine in
its worker process) with `ember bench serve`'s load generator, N concurrent streaming clients.
Runs alternate, engine then server, so drifts of a noisy machine hit both alike; each side
gets one warm-up request first.

    python scripts/bench_serve_overhead.py --streams 16 --max-tokens 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ember.bench.serve_load import LoadPlan, default_processes, format_report, run_load
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams

PROMPT = "Write a short story about a lighthouse keeper."


def engine_tokens_per_second(engine: LLMEngine, streams: int, max_tokens: int) -> float:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    for i in range(streams):
        engine.add_request(i, PROMPT, params)
    tokens = 0
    while engine.has_unfinished_requests():
        tokens += sum(len(out.new_token_ids) for out in engine.step())
    return tokens / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    """Poll the server's /ready until 200 (then return it); its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(url + "/ready", timeout=10).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise TimeoutError("server did not become ready")


def recorded_by(server: subprocess.Popen[bytes], dump: str) -> Any:
    """What a server patched with recorders wrote to `dump` as JSON when sent SIGUSR1."""
    server.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not Path(dump).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return json.loads(Path(dump).read_text())


def start_server(log: Path, options: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember.cli", "serve", "--port", str(port), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return wait_until_ready(process, f"http://127.0.0.1:{port}", log, 600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--processes", type=int, help="load generator processes (default: auto)")
    args = parser.parse_args()

    options = ["--device", args.device] + (["--model", args.model] if args.model else [])
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, show_progress=False))
    engine_tokens_per_second(engine, 1, 4)  # warm-up
    log = Path(tempfile.mkdtemp()) / "ember-serve.log"
    server, url = start_server(log, options)
    plan = LoadPlan(
        url=url,
        endpoint="completions",
        concurrency=args.streams,
        num_requests=args.streams,
        prompt=PROMPT,
        max_tokens=args.max_tokens,
        ignore_eos=True,
        processes=args.processes or default_processes(args.streams),
    )
    try:
        run_load(LoadPlan(url=url, endpoint="completions", num_requests=1, max_tokens=4))
        engine_rates, server_rates = [], []
        for round_ in range(args.rounds):
            engine_rates.append(engine_tokens_per_second(engine, args.streams, args.max_tokens))
            report = run_load(plan)
            assert not report.errors, report.errors
            server_rates.append(report.output_tokens_per_second)
            print(
                f"round {round_ + 1}: engine {engine_rates[-1]:.1f} tok/s, "
                f"server {server_rates[-1]:.1f} tok/s "
                f"({server_rates[-1] / engine_rates[-1]:.0%})",
                flush=True,
            )
        print(format_report(plan, report))
    finally:
        server.terminate()
        server.wait(120)
    engine_median = statistics.median(engine_rates)
    server_median = statistics.median(server_rates)
    print(
        f"median: engine {engine_median:.1f} tok/s, server {server_median:.1f} tok/s, "
        f"server/engine {server_median / engine_median:.0%}"
    )


if __name__ == "__main__":
    main()
