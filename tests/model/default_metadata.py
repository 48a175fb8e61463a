"""The default model's tokenizer metadata, read once through our own GGUF reader."""

from __future__ import annotations

from functools import cache

from ember.model.default_model import default_model_path
from ember.model.gguf_file import GGUFFile


@cache
def default_tokenizer_metadata() -> dict[str, object]:
    metadata = GGUFFile.open(default_model_path()).metadata
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.")}
