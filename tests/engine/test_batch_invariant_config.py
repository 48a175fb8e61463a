"""The batch-invariant flag's plumbing on the CPU: EngineConfig to the backend, `LLM(...)`, and
the command lines that build engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember import LLM
from ember.cli import _server_config, build_parser
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.model.loader import load_model
from ember.model.numpy_llama import NumpyLlama

TINY = Path(__file__).parent.parent / "fixtures" / "tiny_llama.gguf"


class RecordingBackend(NumpyLlama):
    """The NumPy backend, remembering what the engine asked of it."""

    batch_invariant: bool | None = None

    def set_batch_invariant(self, on: bool) -> None:
        self.batch_invariant = on


@pytest.mark.parametrize("on", [False, True])
def test_the_engine_hands_the_flag_to_its_backend(on: bool) -> None:
    model = load_model(TINY, "cpu", show_progress=False)
    assert isinstance(model.backend, NumpyLlama)
    model.backend.__class__ = RecordingBackend
    LLMEngine(EngineConfig(model=str(TINY), batch_invariant=on, show_progress=False), model)
    assert model.backend.batch_invariant is on  # type: ignore[attr-defined]


def test_default_is_the_fast_path() -> None:
    assert EngineConfig().batch_invariant is False


def test_llm_takes_the_flag() -> None:
    llm = LLM(model=str(TINY), batch_invariant=True, show_progress=False)
    assert llm.engine.config.batch_invariant is True


@pytest.mark.parametrize("command", ["run", "bench", "serve", "worker"])
def test_command_lines_take_the_flag(command: str) -> None:
    parser = build_parser()
    base = {"run": ["run", "hi"], "bench": ["bench"], "serve": ["serve"]}.get(
        command, ["worker", "--nats", "nats://127.0.0.1:4222"]
    )
    assert parser.parse_args(base).batch_invariant is False
    args = parser.parse_args([*base, "--batch-invariant"])
    assert args.batch_invariant is True
    if command in ("serve", "worker"):
        assert _server_config(args).engine.batch_invariant is True
