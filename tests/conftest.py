from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ember.engine.config import EngineConfig
from ember.engine.llm import LLM
from ember.engine.llm_engine import LLMEngine
from ember.model.loader import LoadedModel, load_model

# A 2-layer random Llama with a real byte-level BPE tokenizer and a chat template, ~60 KB;
# scripts/make_tiny_model.py writes it and says what the engine's tests rely on.
TINY_MODEL_PATH = Path(__file__).parent / "fixtures" / "tiny_llama.gguf"


# Fixtures that run the real default model: in this process, or in an `ember serve` process
# (tests/serve/conftest.py). Loading it takes 1-3 s and a test on it seconds, so needing one
# of these is what makes a test slow; `-m "not slow"` runs without the model.
_REAL_MODEL_FIXTURES = frozenset({"default_model", "server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The real default model (SmolLM2-135M Q4_1), loaded once for the whole run."""
    return load_model(None, "cpu", show_progress=False)


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """tests/fixtures/tiny_llama.gguf through the real loader (a few milliseconds)."""
    return load_model(TINY_MODEL_PATH, "cpu", show_progress=False)


def _llm_factory(model: LoadedModel) -> Callable[..., LLM]:
    def factory(**options: Any) -> LLM:
        settings: dict[str, Any] = {"show_progress": False} | options
        return LLM(engine=LLMEngine(EngineConfig(**settings), model=model))

    return factory


@pytest.fixture()
def make_llm(default_model: LoadedModel) -> Callable[..., LLM]:
    """An `LLM` over the shared loaded default model, with engine options for this test."""
    return _llm_factory(default_model)


@pytest.fixture()
def make_tiny_llm(tiny_model: LoadedModel) -> Callable[..., LLM]:
    """An `LLM` over the tiny fixture model, with engine options for this test."""
    return _llm_factory(tiny_model)
