"""What the HTTP server knows of its model: name, tokenizer, chat template, context length.

Read from the GGUF's metadata alone (the tensors stay unread in the memory map), so the server
process stays small and starts in a second while the worker loads the weights.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelNotFoundError
from ember.model.chat_template import TEMPLATE_KEY, ChatTemplate
from ember.model.config import ModelConfig
from ember.model.default_model import DEFAULT_MODEL_NAME, default_model_path, resolve_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.synthetic import is_synthetic, preset, synthetic_tokenizer
from ember.model.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    path: Path
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    context_length: int
    created: int  # Unix time the server loaded it, as /v1/models reports

    @classmethod
    def load(cls, model: str | None, served_name: str | None = None) -> ServedModel:
        if is_synthetic(model):
            return cls._synthetic(str(model), served_name)
        path = resolve_model_path(model)
        gguf = GGUFFile.open(path)
        config = ModelConfig.from_gguf(gguf)
        has_template = gguf.get(TEMPLATE_KEY) is not None
        return cls(
            name=served_name or _default_name(path),
            path=path,
            tokenizer=Tokenizer.from_gguf(gguf),
            chat_template=ChatTemplate.from_gguf(gguf) if has_template else None,
            context_length=config.context_length,
            created=int(time.time()),
        )

    @classmethod
    def _synthetic(cls, model: str, served_name: str | None) -> ServedModel:
        """Random weights of real shapes, for benchmarks; the text is meaningless."""
        config, _ = preset(model)
        return cls(
            name=served_name or model,
            path=Path(model),
            tokenizer=synthetic_tokenizer(config.vocab_size),
            chat_template=None,
            context_length=config.context_length,
            created=int(time.time()),
        )


def _default_name(path: Path) -> str:
    # The default model not being installed is no error when serving another one.
    with contextlib.suppress(ModelNotFoundError):
        if path.resolve() == default_model_path().resolve():
            return DEFAULT_MODEL_NAME
    return path.stem
