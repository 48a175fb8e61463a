"""llama.cpp's own benchmarks on the same model, run beside Ember's for same-machine ratios.

`llama-bench` gives prefill (pp) and one-sequence decode (tg) rates; `llama-batched-bench`
gives aggregate decode rates for N parallel sequences (its S_TG column). Both run with flash
attention on and every layer on the GPU.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import EmberError


@dataclass(slots=True)
class LlamaCppFigures:
    prefill: float | None = None  # tokens/s
    decode: dict[int, float] = field(default_factory=dict)  # sequences -> aggregate tokens/s


def _tool(bin_dir: Path, name: str) -> Path:
    for candidate in (bin_dir / name, bin_dir / "bin" / name):
        if candidate.is_file():
            return candidate
    raise EmberError(f"--compare-llama-cpp: no {name} in {bin_dir} (build llama.cpp there)")


def _run(command: list[str], *, with_log: bool = False) -> str:
    """The tool's stdout (and its log, stderr, too with `with_log`: llama-batched-bench writes
    its rows to either, depending on the version), or an EmberError with the log's end."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise EmberError(f"{Path(command[0]).name} failed: {done.stderr[-800:]}")
    return done.stdout + done.stderr if with_log else done.stdout


def run_llama_cpp(
    bin_dir: Path,
    model: Path,
    batch_sizes: list[int],
    prompt_tokens: int,
    decode_tokens: int,
    prefill_tokens: int,
) -> LlamaCppFigures:
    figures = LlamaCppFigures()
    bench = [str(_tool(bin_dir, "llama-bench")), "-m", str(model), "-ngl", "99", "-fa", "1"]
    bench += ["-p", str(prefill_tokens), "-n", str(decode_tokens), "-r", "3", "-o", "json"]
    # stdout alone: it holds exactly the JSON array, and the device log goes to stderr.
    for entry in json.loads(_run(bench)):
        if entry.get("n_gen") == 0:
            figures.prefill = float(entry["avg_ts"])
        elif entry.get("n_prompt") == 0:
            figures.decode[1] = float(entry["avg_ts"])
    parallel = [b for b in batch_sizes if b > 1]
    if parallel:
        context = max(parallel) * (prompt_tokens + decode_tokens) + 256
        batched = [str(_tool(bin_dir, "llama-batched-bench")), "-m", str(model), "-ngl", "99"]
        batched += ["-fa", "on", "-c", str(context), "-b", "2048", "-ub", "512"]
        batched += ["-npp", str(prompt_tokens), "-ntg", str(decode_tokens)]
        batched += ["-npl", ",".join(map(str, parallel)), "--output-format", "jsonl"]
        for line in _run(batched, with_log=True).splitlines():
            if line.startswith('{"n_kv_max"'):
                row = json.loads(line)
                figures.decode[int(row["pl"])] = float(row["speed_tg"])
    return figures
