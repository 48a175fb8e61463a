from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ember.engine.llm import LLM
from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.model.loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    """The real default model (SmolLM2-135M Q4_1), loaded once for the whole run."""
    return load_model(None, "cpu", show_progress=False)


@pytest.fixture()
def make_llm(default_model: LoadedModel) -> Callable[..., LLM]:
    """An `LLM` over the shared loaded model, with engine options for this test."""

    def factory(**options: Any) -> LLM:
        return LLM(engine=LLMEngine(EngineConfig(**options), model=default_model))

    return factory
