"""Reading llama.cpp's benchmark output, as llama-bench really prints it (a recorded run)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ember.bench.llama_cpp import run_llama_cpp
from ember.errors import EmberError

RECORDED = Path(__file__).parent.parent / "fixtures" / "llama_cpp"


def _tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_reads_the_json_on_stdout_and_ignores_the_log(tmp_path: Path) -> None:
    out, err = RECORDED / "llama-bench.stdout.json", RECORDED / "llama-bench.stderr.txt"
    _tool(tmp_path, "llama-bench", f"cat '{out}'; cat '{err}' >&2\n")
    _tool(tmp_path, "llama-batched-bench", "exit 1\n")  # not run for batch 1 alone
    figures = run_llama_cpp(tmp_path, tmp_path / "model.gguf", [1], 128, 64, 512)
    assert figures.prefill is not None and 30_000 < figures.prefill < 70_000
    assert 800 < figures.decode[1] < 1_000


def test_a_failing_tool_is_a_clear_error(tmp_path: Path) -> None:
    _tool(tmp_path, "llama-bench", "echo 'error: failed to load model' >&2; exit 1\n")
    with pytest.raises(EmberError, match="llama-bench failed: error: failed to load model"):
        run_llama_cpp(tmp_path, tmp_path / "model.gguf", [1], 128, 64, 512)
