"""Where an interactive stream's slow first tokens and gaps come from under a batch flood.

Issue 16's benchmark (`bench_service_classes.sh`) gives the interactive tenant's TTFT and ITL
p99 beside a 256-stream batch flood; this finds what each slow one coincided with. A real
`ember serve --tenants` (real worker) runs in a subprocess with two recorders patched into its
server process: every engine step's report as it arrives (time, sequences, tokens, waiting)
and the event loop's lag (a task that sleeps 1 ms and notes how late it wakes). The
interactive load runs here (`ember bench serve`'s client, with each request's send time); the
flood is `ember bench serve --mix` in a subprocess. `time.perf_counter` is CLOCK_MONOTONIC,
shared by the processes of one host.

Printed: the interactive TTFT and ITL p50/p99 alone and beside the flood; then, for the slowest
first tokens and gaps beside the flood, the event loop's longest stall and the engine's longest
step interval and largest step (tokens) inside each, and the share of slow ones that had a
stall of 5 ms or more against a step interval of 5 ms or more.

    python scripts/trace_service_classes.py --model MODEL --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_serve_overhead import free_port, recorded_by, wait_until_ready

from ember.bench.serve_load import LoadPlan, LoadReport, run_load_async

_LAG_PERIOD = 0.001
_FLOOD_KEY = {"Authorization": "Bearer key-bulk"}


def serve(argv: list[str], dump: str) -> None:
    """The server subprocess: `ember serve ARGV` with the recorders patched in."""
    from ember import cli
    from ember.serve import engine_client
    from ember.serve import server as server_module

    steps: list[tuple[float, int, int, int]] = []  # time, sequences, tokens, waiting
    lags: list[tuple[float, float]] = []  # when the sleeper woke, how late
    on_step = engine_client.EngineClient._on_step

    def recorded_on_step(self: Any, report: Any) -> None:
        stats = report.stats
        steps.append(
            (time.perf_counter(), stats.last_batch_size, stats.last_batch_tokens, stats.num_waiting)
        )
        on_step(self, report)

    async def sleeper() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_LAG_PERIOD)
            now = time.perf_counter()
            if now - before > 2 * _LAG_PERIOD:
                lags.append((now, now - before - _LAG_PERIOD))

    build_app = server_module.build_app

    def recorded_build_app(*args: Any, **kwargs: Any) -> Any:
        app = build_app(*args, **kwargs)
        started: list[asyncio.Task[None]] = []

        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            if not started:
                started.append(asyncio.get_running_loop().create_task(sleeper()))
            await app(scope, receive, send)

        return recorded

    def write(signum: int, frame: Any) -> None:
        Path(dump).write_text(json.dumps({"steps": steps, "lags": lags}))

    engine_client.EngineClient._on_step = recorded_on_step  # type: ignore[method-assign]
    server_module.build_app = recorded_build_app  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, write)
    sys.exit(cli.main(argv))


def tenants_file(directory: Path) -> Path:
    from ember.serve.api_keys import key_hash

    path = directory / "tenants.toml"
    path.write_text(
        f'[tenants.chat]\nkeys = ["{key_hash("key-chat")}"]\nclass = "interactive"\n\n'
        f'[tenants.bulk]\nkeys = ["{key_hash("key-bulk")}"]\nclass = "batch"\n'
    )
    return path


def interactive(url: str, requests: int, max_tokens: int) -> LoadReport:
    plan = LoadPlan(
        url=url, api_key="key-chat", concurrency=4, num_requests=requests,
        max_tokens=max_tokens, ignore_eos=True,
    )  # fmt: skip
    return asyncio.run(run_load_async(plan))


def flood(url: str, requests: int) -> subprocess.Popen[bytes]:
    mix = f"batch:key-bulk:256:128:{requests}"
    command = ["ember", "bench", "serve", "--url", url, "--mix", mix, "--ignore-eos"]
    # Its own session: its load processes end with it (os.killpg).
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)


def wait_for_flood(url: str, running: int) -> None:
    """Until the engine runs `running` sequences (the flood's processes take seconds to start)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics", headers=_FLOOD_KEY, timeout=10).text.splitlines():
            if line.startswith("vllm:num_requests_running") and float(line.split()[-1]) >= running:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the flood never reached {running} running sequences")


def percentiles(report: LoadReport) -> str:
    ttft, itl = report.ttft_percentile, report.itl_percentile
    return (
        f"TTFT p50 / p99 {ttft(50) or 0:.4f} / {ttft(99) or 0:.4f} s, "
        f"ITL p50 / p99 {itl(50) or 0:.4f} / {itl(99) or 0:.4f} s"
    )


def windows(report: LoadReport) -> list[tuple[str, float, float]]:
    """Each request's first-token wait and each gap between chunks: (kind, start, end)."""
    found = []
    for record in report.completed:
        if record.ttft is None:
            continue
        at = record.sent + record.ttft
        found.append(("ttft", record.sent, at))
        for gap in record.itls:
            found.append(("itl", at, at + gap))
            at += gap
    return found


def explain(report: LoadReport, steps: np.ndarray, lags: np.ndarray, slowest: int) -> None:
    step_times = steps[:, 0]
    previous = np.concatenate([step_times[:1], step_times[:-1]])  # each step's predecessor
    spans_of = windows(report)
    for kind in ("ttft", "itl"):
        spans = sorted(
            (w for w in spans_of if w[0] == kind), key=lambda w: w[2] - w[1], reverse=True
        )[:slowest]
        print(f"\nslowest {kind}: seconds; in the window: longest loop stall, longest step")
        print("interval, largest step (sequences / tokens), most waiting")
        stalled = stepped = 0
        for _, start, end in spans:
            lag_in = lags[(lags[:, 0] > start) & (lags[:, 0] - lags[:, 1] < end)]
            stall = float(lag_in[:, 1].max()) if len(lag_in) else 0.0
            inside = (step_times > start) & (step_times <= end)
            in_window = steps[inside]
            if len(in_window):
                # A step that ended in the window, timed from the previous one or the window's
                # start.
                interval = float((step_times - np.maximum(previous, start))[inside].max())
                largest = in_window[np.argmax(in_window[:, 2])]
                size = f"{int(largest[1])} / {int(largest[2])}"
                waiting = int(in_window[:, 3].max())
            else:
                interval, size, waiting = end - start, "-", 0
            stalled += stall >= 0.005
            stepped += interval >= 0.005
            print(
                f"  {end - start:.4f}: stall {stall:.4f}, step interval {interval:.4f}, "
                f"step {size}, waiting {waiting}"
            )
        print(f"  {stalled} of {len(spans)} with a stall >= 5 ms, {stepped} with a step >= 5 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--requests", type=int, default=256, help="interactive requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="per interactive request")
    parser.add_argument("--slowest", type=int, default=12, help="windows to explain")
    parser.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[1:], args.serve[0])
        return

    directory = Path(tempfile.mkdtemp())
    port, dump = free_port(), str(directory / "trace.json")
    argv = ["serve", "--model", args.model, "--device", args.device, "--port", str(port)]
    argv += ["--log-level", "warning", "--tenants", str(tenants_file(directory))]
    log = directory / "ember-serve.log"
    with log.open("wb") as out:
        command = [sys.executable, __file__, "--model", args.model, "--serve", dump, *argv]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server, url = wait_until_ready(process, f"http://127.0.0.1:{port}", log, 600)
    try:
        interactive(url, 16, args.max_tokens)  # warm-up
        alone = interactive(url, args.requests, args.max_tokens)
        print(f"interactive alone:        {percentiles(alone)}")
        load = flood(url, 1 << 20)
        wait_for_flood(url, 200)
        loaded = interactive(url, args.requests, args.max_tokens)
        os.killpg(load.pid, signal.SIGKILL)
        load.wait(60)
        print(f"interactive beside flood: {percentiles(loaded)}")
        trace = recorded_by(server, dump)
    finally:
        server.terminate()
        server.wait(120)
    steps = np.array(trace["steps"], dtype=np.float64).reshape(-1, 4)
    lags = np.array(trace["lags"], dtype=np.float64).reshape(-1, 2)
    explain(loaded, steps, lags, args.slowest)


if __name__ == "__main__":
    main()
