"""`ember` command line: run, info, bench, serve, worker, keys."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.engine.config import EngineConfig
from ember.engine.sampling_params import SamplingParams
from ember.errors import EmberError
from ember.serve.config import QueueConfig, ServerConfig

if TYPE_CHECKING:
    from ember.bench.engine_throughput import BenchResult
    from ember.serve.queue_worker import WorkerConfig


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="path to a GGUF (default: SmolLM2-135M)")
    parser.add_argument(
        "--device", default=_default(EngineConfig, "device"), choices=("cpu", "cuda", "auto")
    )
    parser.add_argument(
        "--batch-invariant",
        action="store_true",
        default=_default(EngineConfig, "batch_invariant"),
        help="on the GPU, the same bits for a request alone or in any batch (greedy and "
        "seeded), at a throughput cost: see docs/batch_invariance.md",
    )


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=_default(SamplingParams, "top_k"))
    parser.add_argument("--top-p", type=float, default=0.9)
    for name in ("min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, default=_default(SamplingParams, name))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Ember LLM inference")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="stream a completion for a prompt")
    run.add_argument("prompt")
    run.add_argument("--chat", action="store_true", help="apply the model's chat template")
    run.add_argument("--system", default=None, help="system message (with --chat)")
    _add_model_args(run)
    _add_sampling_args(run)

    info = commands.add_parser("info", help="print a model's metadata and tensor types")
    info.add_argument("model", nargs="?", default=None)

    bench = commands.add_parser("bench", help="prefill and decode throughput")
    _add_model_args(bench)
    bench.add_argument("--batch-sizes", default="1,16,64")
    bench.add_argument("--decode-tokens", type=int, default=32)
    bench.add_argument("--prompt-tokens", type=int, default=32)
    bench.add_argument("--prefill-tokens", type=int, default=512)
    bench.add_argument(
        "--compare-llama-cpp",
        default=None,
        metavar="DIR",
        help="also run llama.cpp's llama-bench and llama-batched-bench from DIR on the model",
    )
    bench.add_argument(
        "--cold-start", action="store_true", help="also time a fresh `ember run` to first token"
    )
    bench.add_argument(
        "--no-async-scheduling",
        action="store_true",
        help=_NO_ASYNC_HELP,
    )
    bench_forms = bench.add_subparsers(dest="bench_command", metavar="{serve,queue}")
    bench_serve = bench_forms.add_parser(
        "serve", help="load-test an OpenAI-compatible server (any, not only Ember)"
    )
    _add_bench_serve_args(bench_serve)
    bench_queue = bench_forms.add_parser(
        "queue", help="jobs through Ember's async API (ember serve --queue or a gateway)"
    )
    bench_queue.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    bench_queue.add_argument("--model", default=None)
    bench_queue.add_argument("--api-key", default="EMPTY")
    bench_queue.add_argument("--jobs", type=int, default=200)
    bench_queue.add_argument("--concurrency", type=int, default=16)
    bench_queue.add_argument("--prompt", default="Hello")
    bench_queue.add_argument("--max-tokens", type=int, default=1)

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_model_args(serve)
    _add_serve_args(serve)
    _add_queue_args(serve, gateway=False)

    gateway = commands.add_parser(
        "gateway", help="the HTTP front without an engine: every request goes through the queue"
    )
    gateway.add_argument(
        "--model", default=None, help="GGUF whose tokenizer and chat template check requests"
    )
    _add_http_args(gateway)
    _add_queue_args(gateway, gateway=True)

    worker = commands.add_parser(
        "worker", help="run queued jobs from NATS JetStream through a local engine server"
    )
    _add_model_args(worker)
    _add_serve_args(worker)
    _add_worker_args(worker)

    keys = commands.add_parser("keys", help="API keys for `ember serve --tenants`")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser(
        "create", help="print a new random key once, and the hash to put in the tenants file"
    )
    create.add_argument("--tenant", required=True, help="the tenant the key is for")
    return parser


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    _add_http_args(parser)
    _add_engine_serve_args(parser)


def _add_http_args(parser: argparse.ArgumentParser) -> None:
    """The HTTP server's flags, `ember gateway`'s too."""
    add = parser.add_argument

    def server(name: str) -> Any:
        return _default(ServerConfig, name)

    add("--host", default=server("host"))
    add("--port", type=int, default=server("port"))
    add("--served-model-name", default=None, help="model id for clients (default: from the file)")
    add(
        "--request-timeout",
        type=float,
        default=server("request_timeout"),
        help="seconds per request (0: none)",
    )
    add(
        "--shutdown-grace-period",
        type=float,
        default=server("shutdown_grace_period"),
        help="seconds to drain on SIGTERM",
    )
    add("--max-body-bytes", type=int, default=server("max_body_bytes"))
    add(
        "--max-choices",
        type=int,
        default=server("max_choices"),
        help="largest n (choices) per request",
    )
    add(
        "--stream-interval",
        type=float,
        default=server("stream_interval"),
        help="seconds between a stream's chunks at least; tokens arriving sooner go together "
        "in the next chunk (0: a chunk per engine step)",
    )
    add("--log-level", default=server("log_level"), choices=("debug", "info", "warning", "error"))
    add(
        "--allowed-hosts",
        type=_comma_list,
        default=server("allowed_hosts"),
        help="host names the server answers to besides localhost, 127.0.0.1, ::1 and --host "
        "(comma-separated; '*': any); other Host headers get 421",
    )
    add(
        "--allowed-origins",
        type=_comma_list,
        default=server("allowed_origins"),
        help="origins (http://host:port, comma-separated; '*': any) whose browser pages may call "
        "the API, with CORS; other cross-site requests get 403",
    )
    add(
        "--max-connections",
        type=int,
        default=server("max_connections"),
        help="open connections at most (also kept under the descriptor limit)",
    )
    add(
        "--max-header-bytes",
        type=int,
        default=server("max_header_bytes"),
        help="request line and headers at most (431 beyond)",
    )
    add(
        "--read-timeout",
        type=float,
        default=server("read_timeout"),
        help="seconds a client has to send a request's headers, and the longest pause in a body",
    )
    add(
        "--tenants",
        metavar="FILE",
        default=os.environ.get("EMBER_TENANTS_FILE") or server("tenants_file"),
        help="tenants, API key hashes, limits and service classes (TOML; reloaded on SIGHUP "
        "and on change; default: $EMBER_TENANTS_FILE). Without it or --api-key the server is "
        "open to anyone who can reach it",
    )
    add(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("EMBER_API_KEY") or server("api_key"),
        help="the one key callers must send, for a single user (default: $EMBER_API_KEY)",
    )
    add(
        "--metrics-public",
        action="store_true",
        default=server("metrics_public"),
        help="serve /metrics without a key when keys are required",
    )


def _add_worker_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--nats", metavar="URL", required=True, help="the NATS server (JetStream) of the queue")
    add(
        "--max-concurrent-jobs",
        type=int,
        default=64,
        help="jobs run at once at most: the worker fetches only as many as it has room for",
    )
    add(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="exit (status 0) after S seconds without a job (scale to zero; default: never)",
    )
    add("--worker-name", default=None, help="the name jobs record (default: host and pid)")
    add(
        "--gpus",
        default=None,
        metavar="all|LIST",
        help="one worker process per GPU (e.g. 0,1), each seeing only its GPU, under one "
        "supervisor that restarts them; with --device cpu they run on the CPU (for testing)",
    )


def _add_engine_serve_args(parser: argparse.ArgumentParser) -> None:
    """`ember serve`'s engine flags (a gateway has no engine)."""
    add = parser.add_argument

    def engine(name: str) -> Any:
        return _default(EngineConfig, name)

    add("--in-process", action="store_true", help="run the engine in the server process")
    add(
        "--max-queued-requests",
        type=int,
        default=_default(ServerConfig, "max_queued_requests"),
        help="waiting requests before 429",
    )
    add("--max-num-seqs", type=int, default=engine("max_num_seqs"), help="sequences per step")
    add(
        "--max-num-batched-tokens",
        type=int,
        default=engine("max_num_batched_tokens"),
        help="tokens per engine step",
    )
    add(
        "--max-prefill-tokens-per-step",
        type=int,
        default=engine("max_prefill_tokens_per_step"),
        help="prompt tokens per engine step (default: 64 on the CPU, so that a step stays short; "
        "no limit beyond --max-num-batched-tokens on the GPU)",
    )
    add(
        "--kv-cache-memory-mb",
        type=int,
        default=None,
        help="KV cache size (default: 1 GiB on the CPU; half the free GPU memory, at most 16 GiB)",
    )
    add("--num-kv-blocks", type=int, default=None, help="overrides --kv-cache-memory-mb")
    add("--block-size", type=int, default=engine("block_size"))
    add(
        "--starvation-steps",
        type=int,
        default=engine("starvation_steps"),
        help="engine steps a service class may wait with nothing admitted before it goes first "
        "at the next free room (lower classes are delayed, never starved)",
    )
    add(
        "--mask-workers",
        type=int,
        default=engine("mask_workers"),
        help="processes that compute structured outputs' token masks beside the engine "
        "(default: the CPUs it may use less one, at most 8; 0: on the engine's threads)",
    )
    add(
        "--no-jump-forward",
        action="store_true",
        help="sample every token of a structured output, even those its grammar forces "
        "(by default forced tokens are taken without sampling, several in one step)",
    )
    add("--no-prefix-caching", action="store_true")
    add(
        "--no-async-scheduling",
        action="store_true",
        help=_NO_ASYNC_HELP,
    )
    add("--seed", type=int, default=engine("seed"), help="engine seed for requests without one")


def _add_queue_args(parser: argparse.ArgumentParser, gateway: bool) -> None:
    add = parser.add_argument
    if not gateway:
        add(
            "--queue",
            action="store_true",
            help="the async API (/v1/async/..., /v1/jobs/...) over NATS JetStream "
            '(pip install "ember-llm[queue]")',
        )
        add(
            "--no-local-worker",
            action="store_true",
            help="with --queue: run no worker beside the engine (jobs wait for `ember worker`)",
        )
    add(
        "--nats",
        metavar="URL",
        required=gateway,
        default=None,
        help="NATS server or cluster with JetStream"
        + ("" if gateway else " (with --queue; default: start an embedded nats-server)"),
    )
    add(
        "--max-queued-jobs",
        type=int,
        default=None,
        help="jobs queued or running at most; past it a submit is a 429 (default: 100000)",
    )
    if not gateway:
        add(
            "--nats-store",
            metavar="DIR",
            default=None,
            help="the embedded nats-server's JetStream folder (default: ~/.local/state/ember/nats)",
        )


def _add_bench_serve_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    add("--model", default=None, help="model id (default: the first of /v1/models)")
    add("--api-key", default=None, help="the key of a single load (default: EMPTY)")
    add("--endpoint", default="chat", choices=("chat", "completions"))
    add(
        "--concurrency",
        type=int,
        default=None,
        help="streaming clients at most in flight (default: 16)",
    )
    add(
        "--mix",
        default=None,
        metavar="LABEL:KEY:CONCURRENCY[:MAX_TOKENS[:REQUESTS[:BODY_FILE]]],...",
        help="several loads at once, each with its key, concurrency, max_tokens, number of "
        "requests and fields for its bodies (instead of --api-key and --concurrency); a table "
        "per load, its share of output tokens, and the aggregate",
    )
    add(
        "--requests",
        type=int,
        default=64,
        help="requests in all (with --mix: per tenant that names none)",
    )
    add(
        "--extra-body",
        default=None,
        metavar="FILE",
        help="a JSON object whose fields go into every request's body (e.g. a response_format)",
    )
    add("--rate", type=float, default=None, help="arrivals per second (default: all at once)")
    add("--arrivals", default="poisson", choices=("poisson", "fixed"))
    add("--prompt", default="Write a short story about a lighthouse keeper.")
    add("--max-tokens", type=int, default=64)
    add("--ignore-eos", action="store_true", help="ask for exactly --max-tokens tokens")
    add("--temperature", type=float, default=0.0)
    add("--timeout", type=float, default=600.0, help="seconds per request")
    add("--seed", type=int, default=0, help="seed of the arrival times")
    add(
        "--processes",
        type=int,
        default=None,
        help="load-generating processes (default: one per 64 streams, at most a quarter of "
        "the cores)",
    )
    add(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the figures to FILE as JSON (with --mix: per tenant and aggregate)",
    )


_NO_ASYNC_HELP = (
    "launch each step only after the previous step's tokens reach the host (by default, on a "
    "GPU, the next step is launched first so that host work overlaps the device's)"
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `ember worker --gpus` starts its children with it
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
        return code
    except EmberError as error:
        print(f"ember: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ember info | head`): what it read is all it wanted. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "info":
        return _info(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "gateway":
        return _gateway(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "keys":
        return _keys_create(args)
    if args.bench_command == "serve":
        return _bench_serve(args)
    if args.bench_command == "queue":
        return _bench_queue(args)
    return _bench(args)


def _start_driver_early(args: argparse.Namespace) -> None:
    """On a GPU, the driver's start-up runs beside the imports that come next (cold start)."""
    if args.device != "cpu":
        from ember.gpu import warmup

        warmup.start()


def _run(args: argparse.Namespace) -> int:
    _start_driver_early(args)
    from ember.engine.llm import LLM
    from ember.engine.sampling_params import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    llm = LLM(model=args.model, device=args.device, batch_invariant=args.batch_invariant)
    prompt: str | list[int] = args.prompt
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        if args.system is not None:
            messages.insert(0, {"role": "system", "content": args.system})
        prompt = llm.render_chat(messages)
    for delta in llm.stream(prompt, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ember.model.model_info import describe_model

    print(describe_model(args.model))
    return 0


def _bench(args: argparse.Namespace) -> int:
    _start_driver_early(args)
    from ember.bench.engine_throughput import (
        HostCpuTimes,
        cold_start_seconds,
        format_table,
        memory_reference,
        run_benchmarks,
    )
    from ember.engine.llm_engine import LLMEngine

    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        raise EmberError(
            f"--batch-sizes must be comma-separated integers: {args.batch_sizes!r}"
        ) from None
    engine = LLMEngine(
        EngineConfig(
            model=args.model,
            device=args.device,
            max_num_seqs=max(batch_sizes + [1]),
            max_num_batched_tokens=max(1024, args.prefill_tokens),
            # The prefill figure is the backend's rate on whole prompts, as llama-bench's.
            max_prefill_tokens_per_step=max(1024, args.prefill_tokens),
            enable_prefix_caching=False,
            detokenize=False,
            async_scheduling=not args.no_async_scheduling,
            batch_invariant=args.batch_invariant,
        )
    )
    device = engine.model.backend.device_name
    mode = "batch-invariant" if args.batch_invariant else "default"
    print(f"model: {engine.model.path.name}  device: {device}  mode: {mode}")
    cpu_before = HostCpuTimes.read()
    results = run_benchmarks(
        engine, batch_sizes, args.decode_tokens, args.prompt_tokens, args.prefill_tokens
    )
    cpu_after = HostCpuTimes.read()
    print(format_table(results))
    if args.compare_llama_cpp is not None:
        _print_llama_cpp_comparison(args, engine.model.path, batch_sizes, results)
    if args.cold_start:
        seconds = cold_start_seconds(args.model, args.device)
        print(f"cold start (process start to first token, {args.device}): {seconds:.2f} s")
    if device.startswith("cpu"):
        reference = memory_reference()
        print(f"reference: float32 GEMV sweep at {reference:.1f} GB/s (median) on this machine now")
        if cpu_before is not None and cpu_after is not None:
            stolen = cpu_after.steal_share_since(cpu_before)
            print(
                f"host: {stolen:.0%} of its CPU time went to other guests during the runs (steal)"
            )
    return 0


def _print_llama_cpp_comparison(
    args: argparse.Namespace, model: Path, batch_sizes: list[int], results: list[BenchResult]
) -> None:
    from ember.bench.llama_cpp import run_llama_cpp

    theirs = run_llama_cpp(
        Path(args.compare_llama_cpp),
        model,
        batch_sizes,
        args.prompt_tokens,
        args.decode_tokens,
        args.prefill_tokens,
    )
    print(f"{'work':<8} {'batch':>5} {'ember tok/s':>12} {'llama.cpp tok/s':>16} {'ratio':>6}")
    for r in results:
        other = theirs.prefill if r.work == "prefill" else theirs.decode.get(r.batch)
        ours = r.tokens_per_second
        ratio = f"{ours / other:6.2f}" if other else "     -"
        shown = f"{other:16.1f}" if other else f"{'-':>16}"
        print(f"{r.work:<8} {r.batch:>5} {ours:>12.1f} {shown} {ratio}")


def _default(config: type[Any], name: str) -> Any:
    """The default of a config dataclass's field: written there once, shown by --help here."""
    return next(f.default for f in dataclasses.fields(config) if f.name == name)


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _serve(args: argparse.Namespace) -> int:
    queue = None
    if args.queue:
        _require_queue_extra()
        queue = QueueConfig(args.nats, args.nats_store, not args.no_local_worker,
                            args.max_queued_jobs)  # fmt: skip
    elif args.nats or args.nats_store or args.no_local_worker or args.max_queued_jobs:
        raise EmberError(
            "--nats, --nats-store, --no-local-worker and --max-queued-jobs go with --queue"
        )
    config = dataclasses.replace(_server_config(args), queue=queue)
    # The engine's process first: its imports and model load run beside the server's own.
    from ember.serve.engine_spawn import prestart_engine

    prestarted = prestart_engine(config)
    from ember.serve.server import run_server

    run_server(config, prestarted)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    _require_queue_extra()
    from ember.serve.gateway import run_gateway

    # No engine runs here: its fields keep `ember serve`'s defaults; only the model is read.
    serve_defaults = vars(build_parser().parse_args(["serve"]))
    config = _server_config(argparse.Namespace(**(serve_defaults | vars(args))))
    queue = QueueConfig(args.nats, max_queued_jobs=args.max_queued_jobs)
    run_gateway(dataclasses.replace(config, queue=queue))
    return 0


def _worker(args: argparse.Namespace) -> int:
    _refuse_client_flags(args)
    # The local server listens on a free loopback port and only the worker calls it, saying
    # each job's tenant (checked where the job was submitted).
    local = dataclasses.replace(_server_config(args), host="127.0.0.1", port=0,
                                tenants_file=None, api_key=None, trust_job_tenant=True)  # fmt: skip
    # The engine's process first (each GPU's worker starts its own): its imports and model
    # load run beside this process's own (the HTTP stack, NATS), which a cold worker's first
    # job would otherwise wait for in turn.
    from ember.serve.engine_spawn import prestart_engine

    prestarted = None if args.gpus is not None else prestart_engine(local)
    from ember.serve.queue_worker import WorkerConfig, run_worker

    config = WorkerConfig(
        nats_url=args.nats,
        server=local,
        max_concurrent_jobs=args.max_concurrent_jobs,
        idle_timeout=args.idle_timeout,
        name=args.worker_name,
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    if args.gpus is not None:
        return _gpu_workers(args, config)
    return run_worker(config, prestarted)


def _gpu_workers(args: argparse.Namespace, worker: WorkerConfig) -> int:
    from ember.gpu.device import Device
    from ember.serve.gpu_workers import GpuWorkerPlan, option_given, resolve_gpus, run_gpu_workers

    device = args.device if option_given(args.argv, "--device") else "cuda"
    server = worker.server
    return run_gpu_workers(
        GpuWorkerPlan(
            gpus=resolve_gpus(args.gpus, device, Device.count),
            argv=tuple(args.argv),
            name=worker.worker_name,
            device=device,
            environment=dict(os.environ),
            restart_clean_exits=worker.idle_timeout is None,
            restart_backoff=server.restart_backoff,
            max_restart_backoff=server.max_restart_backoff,
            # A child drains for the grace period, then stops its engine server.
            stop_timeout=server.shutdown_grace_period + 30.0,
            log_level=server.log_level,
        )
    )


def _refuse_client_flags(args: argparse.Namespace) -> None:
    """A worker serves no client: flags of the HTTP front it would ignore are refused."""
    unused = {
        "--host": args.host != _default(ServerConfig, "host"),
        "--port": args.port != _default(ServerConfig, "port"),
        # Their defaults come from the environment, which a worker may share with a server.
        "--tenants": args.tenants not in (None, os.environ.get("EMBER_TENANTS_FILE")),
        "--api-key": args.api_key not in (None, os.environ.get("EMBER_API_KEY")),
        "--allowed-hosts": bool(args.allowed_hosts),
        "--allowed-origins": bool(args.allowed_origins),
        "--metrics-public": bool(args.metrics_public),
    }
    given = [option for option, set_ in unused.items() if set_]
    if given:
        raise EmberError(
            f"ember worker serves no clients, so {', '.join(given)} would do nothing: a worker "
            "takes jobs from --nats and runs them on a private loopback server; keys and hosts "
            "belong to `ember serve --queue` or `ember gateway`"
        )


def _require_queue_extra() -> None:
    """nats-py missing: QueueDependencyError says what to install, before anything starts."""
    import ember.queue.job_store  # noqa: F401


def _server_config(args: argparse.Namespace) -> ServerConfig:
    engine = EngineConfig(
        model=args.model,
        device=args.device,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_prefill_tokens_per_step=args.max_prefill_tokens_per_step,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory_bytes=None
        if args.kv_cache_memory_mb is None
        else args.kv_cache_memory_mb << 20,
        enable_prefix_caching=not args.no_prefix_caching,
        async_scheduling=not args.no_async_scheduling,
        batch_invariant=args.batch_invariant,
        starvation_steps=args.starvation_steps,
        mask_workers=args.mask_workers,
        jump_forward=not args.no_jump_forward,
        seed=args.seed,
    )
    return ServerConfig(
        engine=engine,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        in_process=args.in_process,
        max_queued_requests=args.max_queued_requests,
        request_timeout=args.request_timeout or None,
        shutdown_grace_period=args.shutdown_grace_period,
        max_body_bytes=args.max_body_bytes,
        max_choices=args.max_choices,
        stream_interval=args.stream_interval,
        log_level=args.log_level,
        allowed_hosts=args.allowed_hosts,
        allowed_origins=args.allowed_origins,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header_bytes,
        read_timeout=args.read_timeout,
        tenants_file=args.tenants,
        api_key=args.api_key,
        metrics_public=args.metrics_public,
    )


def _keys_create(args: argparse.Namespace) -> int:
    from ember.serve.api_keys import key_hash, new_key, short_id
    from ember.serve.tenants_file import valid_name

    if not valid_name(args.tenant):
        raise EmberError(
            f"--tenant {args.tenant!r}: a tenant name is 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    key = new_key()
    stored = key_hash(key)
    print(f"API key for tenant {args.tenant!r} (shown only now; the server keeps its hash):")
    print(f"  {key}")
    print(f"key id {short_id(stored)}. In the tenants file, add the hash to the tenant's keys:")
    print(f"[tenants.{args.tenant}]")
    print(f'keys = ["{stored}"]')
    return 0


def _bench_queue(args: argparse.Namespace) -> int:
    from ember.bench.queue_load import QueuePlan, format_queue_report, run_queue_load

    plan = QueuePlan(
        url=args.url,
        model=args.model,
        api_key=args.api_key,
        num_jobs=args.jobs,
        concurrency=args.concurrency,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
    )
    print(format_queue_report(plan, run_queue_load(plan)))
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from ember.bench.serve_load import (
        LoadPlan,
        default_processes,
        format_mix_report,
        format_report,
        mix_figures,
        parse_mix,
        read_extra_body,
        report_figures,
        run_load,
        run_mix,
    )

    if args.mix is not None and (args.api_key is not None or args.concurrency is not None):
        raise EmberError("--mix gives each tenant its key and concurrency; drop --api-key and "
                         "--concurrency")  # fmt: skip
    concurrency = 16 if args.concurrency is None else args.concurrency
    plan = LoadPlan(
        url=args.url,
        model=args.model,
        api_key="EMPTY" if args.api_key is None else args.api_key,
        endpoint=args.endpoint,
        concurrency=concurrency,
        num_requests=args.requests,
        rate=args.rate,
        arrivals=args.arrivals,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        timeout=args.timeout,
        seed=args.seed,
        processes=args.processes or default_processes(concurrency),
        extra_body=None if args.extra_body is None else read_extra_body(args.extra_body),
    )
    if args.mix is None:
        report = run_load(plan)
        print(format_report(plan, report))
        figures = report_figures(report)
    else:
        loads = parse_mix(args.mix, plan, processes=args.processes)
        reports = run_mix(loads)
        print(format_mix_report(loads, reports))
        figures = mix_figures(loads, reports)
    if args.json is not None:
        try:
            Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
        except OSError as error:
            raise EmberError(f"--json {args.json}: {error.strerror or error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
