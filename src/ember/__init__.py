"""Ember: LLM inference from Python with no PyTorch and no CUDA toolkit.

The public names are imported lazily, so `import ember.model.gguf_file` (or the server's
HTTP process) does not pay for loading the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ember.errors import (
    EmberError,
    InvalidRequestError,
    ModelFormatError,
    ModelNotFoundError,
    PromptTooLongError,
    SamplingParamsError,
)

if TYPE_CHECKING:
    from ember.engine.llm import LLM, Completion
    from ember.engine.sampling_params import SamplingParams

__version__ = "0.1.0"

_LAZY = {
    "LLM": "ember.engine.llm",
    "Completion": "ember.engine.llm",
    "SamplingParams": "ember.engine.sampling_params",
}

__all__ = [
    "LLM",
    "Completion",
    "EmberError",
    "InvalidRequestError",
    "ModelFormatError",
    "ModelNotFoundError",
    "PromptTooLongError",
    "SamplingParams",
    "SamplingParamsError",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
