"""The `ember` command line, run as a user would (real model, real subprocess for errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember.cli import main


def ember(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_info_prints_config_and_tensor_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "layers         30" in out and "heads          9 (kv 3, head dim 64)" in out
    assert "Q4_1" in out and "Q8_0" in out and "tokenizer.ggml.model" in out


def test_info_into_a_pipe_nobody_reads_is_not_an_error() -> None:
    """`ember info | head -n 2` once head has exited: every write meets a closed pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ember", "info"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


@pytest.mark.slow  # loads the real model
def test_run_streams_a_chat_answer(capsys: pytest.CaptureFixture[str]) -> None:
    question = "What is the capital of France?"
    code = main(["run", "--chat", question, "--temperature", "0", "--max-tokens", "12"])
    assert code == 0
    assert "Paris" in capsys.readouterr().out


def test_missing_model_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = ember("run", "hi", "--model", str(tmp_path / "nope.gguf"))
    assert result.returncode == 2
    assert "model file not found" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 10)
    result = ember("info", str(bad))
    assert result.returncode == 2
    assert "bad.gguf" in result.stderr and "Traceback" not in result.stderr


def test_invalid_sampling_flag_is_a_clear_error() -> None:
    result = ember("run", "hi", "--top-p", "1.5")
    assert result.returncode == 2
    assert "top_p must be in (0.0, 1.0]" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "flags", [["--port", "9000"], ["--api-key", "sk-x"], ["--allowed-origins", "https://a.b"]]
)
def test_a_worker_refuses_the_http_fronts_flags(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ember worker` serves no client: a --port or a key it would silently ignore is an error
    naming the flag, before it connects anywhere."""
    code = main(["worker", "--nats", "nats://127.0.0.1:1", *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert "serves no clients" in err and flags[0] in err
