"""Where the cold start goes: process start to the first generated token, phase by phase.

    python scripts/profile_cold_start.py                        # default model, CPU, 5 runs
    python scripts/profile_cold_start.py --device cuda --runs 10
    python scripts/profile_cold_start.py --imports 15           # also the costliest imports

Each run is a fresh `python` process that does what `ember run --max-tokens 2 --temperature 0
Hello` does (the command `ember bench --cold-start` times), one phase after the other, and
stamps the end of each with the monotonic clock, which parent and child share:

- interpreter: `python` itself, `site` and this script's first line;
- imports: what `python -m ember run` imports before it loads a model (ember.cli, the
  engine); `--device cuda` adds the CUDA backend's modules as `imports (cuda)`;
- model path, device check, GGUF open, config, tokenizer, chat template: the text side of
  `load_model`, in its order (the template compiles at the first chat, so here it is only
  read); on a GPU, `ember run` has started the driver (cuInit, the primary context) on a
  thread before its imports (`ember.gpu.warmup`), and so does this, so "device check" and
  "backend load" show what is left of that work after the imports;
- backend load: the weights dequantized to float32 (CPU) or uploaded to the GPU, with the
  CUDA context and kernel modules (cuda); the real loader runs this on a thread beside the
  tokenizer and chat template on the GPU, so there the cold start is shorter than the sum;
- engine: `LLMEngine` over the loaded model (KV cache, scheduler, runner);
- first token: prompt encoded, prefill, the first text delta out of `LLM.stream`.

The table gives wall and CPU time (the process's, all threads) per phase, min and median over
the runs; on a noisy shared VM the CPU minimum is the steadiest figure. Then the same count of
real `ember run` processes is timed to their first byte on stdout, as `ember bench
--cold-start` does. `--imports N` adds `python -X importtime` of the same imports, self time
summed per top-level package, min over the runs.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # first thing: the end of the interpreter's own start

import json  # noqa: E402 - the child imports nothing else before its first phase
import sys  # noqa: E402

PROMPT = "Hello"


def _child(device: str, model: str | None) -> None:
    """One cold start, printed as JSON: [[phase, end (perf_counter), cpu seconds so far]]."""
    marks: list[tuple[str, float, float]] = [("interpreter", _STARTED, time.process_time())]

    def mark(phase: str) -> None:
        marks.append((phase, time.perf_counter(), time.process_time()))

    if device != "cpu":  # as `ember run` does: the driver starts beside the imports
        from ember.gpu import warmup

        warmup.start()
    import ember.cli  # noqa: F401 - `python -m ember` imports the CLI, `run` the engine
    from ember.engine.config import EngineConfig
    from ember.engine.llm import LLM
    from ember.engine.llm_engine import LLMEngine
    from ember.engine.sampling_params import SamplingParams
    from ember.model.backend import ForwardBackend
    from ember.model.chat_template import ChatTemplate
    from ember.model.config import ModelConfig
    from ember.model.default_model import resolve_model_path
    from ember.model.gguf_file import GGUFFile
    from ember.model.llama_weights import LlamaWeights
    from ember.model.loader import LoadedModel, resolve_device
    from ember.model.numpy_llama import NumpyLlama
    from ember.model.tokenizer import Tokenizer

    mark("imports")
    if device == "cuda":
        from ember.model.cuda.llama import CudaLlama

        mark("imports (cuda)")
    path = resolve_model_path(model)
    mark("model path")
    device = resolve_device(device)
    mark("device check")
    gguf = GGUFFile.open(path)
    mark("GGUF open")
    config = ModelConfig.from_gguf(gguf)
    mark("config")
    tokenizer = Tokenizer.from_gguf(gguf)
    mark("tokenizer")
    has_template = gguf.get("tokenizer.chat_template") is not None
    chat_template = ChatTemplate.from_gguf(gguf, compile_now=False) if has_template else None
    mark("chat template")
    backend: ForwardBackend
    if device == "cuda":
        backend = CudaLlama.load(gguf, config)
    else:
        backend = NumpyLlama(config, LlamaWeights.load(gguf, config))
    mark("backend load")
    loaded = LoadedModel(
        path=path,
        config=config,
        tokenizer=tokenizer,
        chat_template=chat_template,
        backend=backend,
        load_seconds=0.0,
    )
    engine = LLMEngine(EngineConfig(model=model, device=device), model=loaded)
    mark("engine")
    params = SamplingParams(max_tokens=2, temperature=0.0)
    stream = LLM(engine=engine).stream(PROMPT, params)
    next(stream)
    stream.close()
    mark("first token")
    print(json.dumps(marks))


def _run_child(device: str, model: str | None) -> list[tuple[str, float, float]]:
    import subprocess

    command = [sys.executable, __file__, "--child", json.dumps([device, model])]
    spawned = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"profile run failed:\n{done.stderr[-2000:]}")
    marks = json.loads(done.stdout.strip().splitlines()[-1])
    phases = []
    last_wall, last_cpu = spawned, 0.0
    for phase, wall, cpu in marks:
        phases.append((phase, wall - last_wall, cpu - last_cpu))
        last_wall, last_cpu = wall, cpu
    return phases


def _import_costs(device: str, runs: int) -> dict[str, float]:
    """Self import time per top-level package (seconds), min over `runs` fresh processes."""
    import subprocess

    statement = "import ember.cli; import ember.engine.llm"
    if device == "cuda":
        statement += "; import ember.model.cuda.llama"
    best: dict[str, float] = {}
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        totals: dict[str, float] = {}
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, _, name = line.removeprefix("import time:").split("|")
            package = name.strip().split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(self_us) / 1e6
        for package, seconds in totals.items():
            best[package] = min(best.get(package, seconds), seconds)
    return best


def main() -> None:
    import argparse
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="a GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per measurement")
    parser.add_argument("--imports", type=int, default=0, metavar="N", help="top N packages")
    parser.add_argument(
        "--no-ember-run", action="store_true", help="skip timing real `ember run` processes"
    )
    args = parser.parse_args()

    runs = [_run_child(args.device, args.model) for _ in range(args.runs)]
    names = [phase for phase, _, _ in runs[0]]
    table: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in [*names, "sum of phases"]
    }
    for phases in runs:
        for name, wall, cpu in phases:
            table[name][0].append(wall)
            table[name][1].append(cpu)
        table["sum of phases"][0].append(sum(wall for _, wall, _ in phases))
        table["sum of phases"][1].append(sum(cpu for _, _, cpu in phases))
    print(f"cold start, {args.device}, {args.runs} runs; milliseconds")
    print(f"{'phase':<16} {'wall min':>9} {'wall med':>9} {'cpu min':>9} {'cpu med':>9}")
    for name, (walls, cpus) in table.items():
        print(
            f"{name:<16} {min(walls) * 1e3:>9.0f} {statistics.median(walls) * 1e3:>9.0f} "
            f"{min(cpus) * 1e3:>9.0f} {statistics.median(cpus) * 1e3:>9.0f}"
        )
    if not args.no_ember_run:
        from ember.bench.engine_throughput import cold_start_seconds

        seconds = [cold_start_seconds(args.model, args.device) for _ in range(args.runs)]
        print(
            f"{'ember run':<16} {min(seconds) * 1e3:>9.0f} {statistics.median(seconds) * 1e3:>9.0f}"
            "   (process start to first byte, as `ember bench --cold-start`)"
        )
    if args.imports:
        costs = _import_costs(args.device, args.runs)
        top = sorted(costs.items(), key=lambda item: -item[1])[: args.imports]
        print(f"imports, self time per top-level package, min of {args.runs} (ms):")
        print("  " + ", ".join(f"{package} {seconds * 1e3:.0f}" for package, seconds in top))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(*json.loads(sys.argv[2]))
    else:
        main()
