"""`ember` command line: run, info, bench."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ember.errors import EmberError


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="path to a GGUF (default: SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "info":
            return _info(args)
        return _bench(args)
    except EmberError as error:
        print(f"ember: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
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
    llm = LLM(model=args.model, device=args.device)
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
    from ember.engine.benchmark import format_table, memory_reference, run_benchmarks
    from ember.engine.llm_engine import EngineConfig, LLMEngine

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
            enable_prefix_caching=False,
        )
    )
    print(f"model: {engine.model.path.name}  device: {engine.model.backend.device_name}")
    results = run_benchmarks(
        engine, batch_sizes, args.decode_tokens, args.prompt_tokens, args.prefill_tokens
    )
    print(format_table(results))
    reference = memory_reference()
    print(f"reference: float32 GEMV sweep at {reference:.1f} GB/s (median) on this machine now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
