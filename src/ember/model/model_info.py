"""A human-readable summary of a GGUF: hyper-parameters, metadata and tensor types."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ember.model.config import ModelConfig
from ember.model.default_model import resolve_model_path
from ember.model.gguf_file import GGUFFile

_LONG_VALUE = 80


def describe_model(model: str | Path | None) -> str:
    path = resolve_model_path(model)
    gguf = GGUFFile.open(path)
    config = ModelConfig.from_gguf(gguf)
    lines = [
        f"file           {path}",
        f"size           {path.stat().st_size / 1e6:.1f} MB",
        f"name           {config.name}",
        f"architecture   {config.architecture}",
        f"parameters     {config.n_params / 1e6:.1f} M",
        f"layers         {config.n_layers}",
        f"d_model        {config.d_model}",
        f"heads          {config.n_heads} (kv {config.n_kv_heads}, head dim {config.head_dim})",
        f"ffn            {config.ffn_dim}",
        f"vocabulary     {config.vocab_size}",
        f"context        {config.context_length}",
        f"rope base      {config.rope.base:g} (linear scaling {config.rope.linear_factor:g})",
        f"rms eps        {config.rms_eps:g}",
        f"tied embedding {config.tied_embeddings}",
        "",
        "metadata",
    ]
    for key, value in gguf.metadata.items():
        lines.append(f"  {key:<44} {_short(value)}")
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for info in gguf.tensors.values():
        counts[info.ggml_type.name] += 1
        sizes[info.ggml_type.name] += info.n_bytes
    lines += ["", f"  {'type':<8} {'tensors':>8} {'MB':>9}"]
    for name, count in counts.most_common():
        lines.append(f"  {name:<8} {count:>8} {sizes[name] / 1e6:>9.2f}")
    return "\n".join(lines)


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _LONG_VALUE else text[: _LONG_VALUE - 3] + "..."
