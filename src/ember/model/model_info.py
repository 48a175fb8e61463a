"""A human-readable summary of a GGUF: hyper-parameters, metadata and the quant mix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import LlamaFileType

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
    lines += ["", *quant_mix(gguf)]
    return "\n".join(lines)


def quant_mix(gguf: GGUFFile) -> list[str]:
    """The tensor types by bytes (largest first), with their tensor counts, then the types of
    the embedding and the output head (the tensors a quantizer most often keeps apart)."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for info in gguf.tensors.values():
        counts[info.ggml_type.name] += 1
        sizes[info.ggml_type.name] += info.n_bytes
    total = sum(sizes.values())
    lines = [_file_type(gguf), f"  {'type':<8} {'tensors':>8} {'MB':>9} {'bytes':>7}"]
    for name, size in sizes.most_common():
        lines.append(f"  {name:<8} {counts[name]:>8} {size / 1e6:>9.2f} {_percent(size, total):>7}")
    lines.append(f"  {'total':<8} {len(gguf.tensors):>8} {total / 1e6:>9.2f} {'100.0%':>7}")
    for label, name in (("embedding", "token_embd.weight"), ("output head", "output.weight")):
        if name in gguf.tensors:
            lines.append(f"{label:<14} {gguf.tensors[name].ggml_type.name} ({name})")
    if "output.weight" not in gguf.tensors:
        lines.append(f"{'output head':<14} the embedding (tied)")
    return lines


def _file_type(gguf: GGUFFile) -> str:
    """`general.file_type` by llama.cpp's name for it (e.g. MOSTLY_Q4_K_M), when recorded."""
    value = gguf.get("general.file_type")
    if not isinstance(value, int):
        return "quant mix"
    try:
        name = LlamaFileType(value).name
    except ValueError:
        name = f"unknown file type {value}"
    return f"quant mix      {name} (general.file_type {value})"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _short(value: object) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _LONG_VALUE else text[: _LONG_VALUE - 3] + "..."
