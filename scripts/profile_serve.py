"""Where the server process's time per token goes on the full HTTP path, engine out of the way.

A real `ember serve` runs in a subprocess (uvicorn, routes, SSE responses, the worker socket
protocol, detokenization, metrics), but its worker process is a stand-in that replays real
text's token ids at GPU speed instead of running a model: each step takes `--step-ms-base +
--step-ms-per-seq x running` ms (default: the fit to the H100's measured engine rates, 9.2
thousand tok/s at 16 streams, 41 thousand at 256). So even on a small CPU machine the server,
not the engine, is what the load measures. The load is `ember bench serve`'s generator in this
process (streaming, `ignore_eos`, all requests at once).

Reported per run: output tok/s, SSE chunks and tokens per chunk, and CPU time per token of the
server process, of the stand-in worker and of the load generator (from /proc and
`time.process_time`, so a busy machine slows the run but barely changes the per-token costs).
`--profile` adds the server's top functions (cProfile, over the measured load only).

    python scripts/profile_serve.py --streams 16,64,256 --max-tokens 128
    python scripts/profile_serve.py --streams 256 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import httpx
from bench_serve_overhead import free_port, wait_until_ready

from ember.bench.serve_load import LoadPlan, RequestRecord, default_processes, run_load
from ember.engine.config import EngineConfig
from ember.engine.engine_stats import EngineStats
from ember.engine.sequence import FinishReason
from ember.engine.sequence_limits import SequenceLimits
from ember.serve.worker_protocol import (
    SERVER_MESSAGES,
    AbortRequests,
    AddRequest,
    FrameSocket,
    RequestDelta,
    Shutdown,
    StepReport,
    WorkerReady,
)

TEXT = (
    "The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his "
    "father had, and lit the lamp that swept the dark water for ships he would never meet. "
    "Storms came in from the west; he logged each one in a ledger with a cracked green spine. "
) * 8
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def replay_worker_main(
    sock: socket.socket, config: EngineConfig, step_base: float, step_per_seq: float
) -> None:
    """The stand-in engine worker: same messages as `worker_main`, token ids from `TEXT`."""
    from ember.model.default_model import resolve_model_path
    from ember.model.gguf_file import GGUFFile
    from ember.model.tokenizer import Tokenizer

    gguf = GGUFFile.open(resolve_model_path(config.model))
    tokens = Tokenizer.from_gguf(gguf).encode(TEXT)
    channel = FrameSocket(sock, SERVER_MESSAGES)
    channel.send(WorkerReady(os.getpid(), "replay", SequenceLimits(49152, 8192, 100_000, 16), 0.0))
    running: dict[int, list[int]] = {}  # seq id -> [next position in tokens, tokens left]
    started: list[int] = []
    deadline = time.monotonic()
    while True:
        try:
            messages = channel.receive_all(block=not running)
        except (EOFError, OSError):
            return
        for message in messages:
            if isinstance(message, AddRequest):
                running[message.request_id] = [message.request_id * 7, message.params.max_tokens]
                started.append(message.request_id)
            elif isinstance(message, AbortRequests):
                for seq_id in message.request_ids:
                    running.pop(seq_id, None)
            elif isinstance(message, Shutdown):
                return
        batch = len(running)
        if not batch:
            deadline = time.monotonic()
            continue
        deltas: list[RequestDelta] = []
        for seq_id, state in list(running.items()):
            token = tokens[state[0] % len(tokens)]
            state[0] += 1
            state[1] -= 1
            finish = None if state[1] else FinishReason.LENGTH
            if finish is not None:
                del running[seq_id]
            deltas.append((seq_id, [token], None, finish))
        deadline = max(deadline + step_base + step_per_seq * batch, time.monotonic())
        time.sleep(max(0.0, deadline - time.monotonic()))
        stats = EngineStats(len(running), 0, 0.1, 100_000, 0, 0, 0, batch, batch)
        channel.send(StepReport(deltas, started, stats))
        started = []


def serve(
    model: str | None,
    port: int,
    step_base: float,
    step_per_seq: float,
    profile_path: str | None,
    options: dict[str, object],
) -> None:
    """The server subprocess: `ember serve` with the stand-in worker."""
    from ember.serve import process_worker
    from ember.serve.config import ServerConfig
    from ember.serve.server import run_server

    process_worker.worker_main = functools.partial(  # type: ignore[assignment]
        replay_worker_main, step_base=step_base, step_per_seq=step_per_seq
    )
    profiler = cProfile.Profile()

    def toggle(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            profiler.enable()
        else:
            profiler.disable()
            if profile_path is not None:
                profiler.dump_stats(profile_path)

    signal.signal(signal.SIGUSR1, toggle)
    signal.signal(signal.SIGUSR2, toggle)
    config = ServerConfig(
        engine=EngineConfig(model=model, max_num_seqs=1024),
        port=port,
        log_level="warning",
        request_timeout=None,
        **options,  # type: ignore[arg-type]
    )
    run_server(config)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def start_server(
    args: argparse.Namespace, profile_path: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "ember-serve.log"
    command = [sys.executable, __file__, "--serve-port", str(port), "--profile-path", profile_path]
    command += ["--step-ms-base", str(args.step_ms_base)]
    command += ["--step-ms-per-seq", str(args.step_ms_per_seq)]
    command += [] if args.model is None else ["--model", args.model]
    if args.stream_interval is not None:
        command += ["--stream-interval", str(args.stream_interval)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return wait_until_ready(process, f"http://127.0.0.1:{port}", log, 300)


def measure(url: str, server_pid: int, worker_pid: int, plan: LoadPlan) -> str:
    server_cpu, worker_cpu = cpu_seconds(server_pid), cpu_seconds(worker_pid)
    client_cpu = time.process_time()
    report = run_load(plan)
    client_cpu = time.process_time() - client_cpu
    server_cpu = cpu_seconds(server_pid) - server_cpu
    worker_cpu = cpu_seconds(worker_pid) - worker_cpu
    assert not report.errors, report.errors
    records: list[RequestRecord] = report.completed
    tokens = sum(r.output_tokens for r in records)
    chunks = sum(len(r.itls) + 1 for r in records)

    def per_token(seconds: float) -> str:
        return f"{seconds / tokens * 1e6:6.1f}"

    return (
        f"{plan.concurrency:>7} {report.output_tokens_per_second:>9,.0f} {chunks:>7} "
        f"{tokens / chunks:>6.2f} {per_token(server_cpu)} {per_token(worker_cpu)} "
        f"{per_token(client_cpu)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="16,64,256", help="comma-separated stream counts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", help="GGUF whose tokenizer and template to serve")
    parser.add_argument("--stream-interval", type=float, help="the server's (default: its own)")
    parser.add_argument("--processes", type=int, help="load generator processes (default: auto)")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--endpoint", default="completions", choices=("completions", "chat"))
    parser.add_argument("--step-ms-base", type=float, default=1.44)
    parser.add_argument("--step-ms-per-seq", type=float, default=0.0188)
    parser.add_argument("--profile", action="store_true", help="cProfile the server's load")
    parser.add_argument("--top", type=int, default=30, help="functions to list with --profile")
    parser.add_argument(
        "--sort", default="tottime", help="pstats order for --profile (tottime, cumulative)"
    )
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy record the server's load to PATH")
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_port is not None:
        step_base, step_per_seq = args.step_ms_base / 1e3, args.step_ms_per_seq / 1e3
        options = {} if args.stream_interval is None else {"stream_interval": args.stream_interval}
        serve(args.model, args.serve_port, step_base, step_per_seq, args.profile_path, options)
        return

    profile_path = str(Path(tempfile.mkdtemp()) / "server.prof")
    server, url = start_server(args, profile_path)
    try:
        worker_pid = int(httpx.get(url + "/ready").json()["worker_pid"])
        run_load(LoadPlan(url=url, endpoint=args.endpoint, num_requests=4, max_tokens=8))
        print(
            f"{'streams':>7} {'tok/s':>9} {'chunks':>7} {'tok/ch':>6} "
            f"{'server':>6} {'worker':>6} {'client':>6}  (CPU us per token)"
        )
        if args.profile:
            server.send_signal(signal.SIGUSR1)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.pid), "--rate", "250", "--format", "raw"]
                + ["-o", args.py_spy]
            )
        for streams in (int(s) for s in args.streams.split(",")):
            plan = LoadPlan(
                url=url,
                endpoint=args.endpoint,
                concurrency=streams,
                num_requests=streams * args.requests_per_stream,
                max_tokens=args.max_tokens,
                ignore_eos=True,
                processes=args.processes or default_processes(streams),
            )
            print(measure(url, server.pid, worker_pid, plan), flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if args.profile:
            server.send_signal(signal.SIGUSR2)
            time.sleep(1.0)
    finally:
        server.terminate()
        server.wait(120)
    if args.profile:
        stats = pstats.Stats(profile_path)
        stats.sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
