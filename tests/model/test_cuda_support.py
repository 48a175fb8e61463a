"""What the CUDA backend refuses, checked before any GPU work (so on the CPU): files whose
attention shape has no compiled kernel name the file, the shape and the way out. And the
synthetic shapes' type mixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import EmberError, ModelFormatError
from ember.model.config import ModelConfig
from ember.model.cuda.llama import CudaLlama, unsupported
from ember.model.gguf_file import GGUFFile
from ember.model.synthetic import PRESETS, TypeMix, preset
from tests.gpu.family_models import FAMILIES, Family, write_family_model


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_runs_on_the_cuda_backend(family: Family, tmp_path: Path) -> None:
    gguf = GGUFFile.open(write_family_model(family, tmp_path / "model.gguf"))
    config = ModelConfig.from_gguf(gguf)
    assert config.features  # each family's feature is read from the file...
    assert unsupported(config) is None  # ... and none of them is refused


def test_an_uncompiled_attention_shape_is_refused_with_the_file(tmp_path: Path) -> None:
    family = Family("wide-heads", "qwen3", 1e6, tied=True, qk_norm=True, head_dim=96)
    path = write_family_model(family, tmp_path / "model.gguf")
    gguf = GGUFFile.open(path)
    with pytest.raises(ModelFormatError) as error:
        CudaLlama.load(gguf, ModelConfig.from_gguf(gguf))
    message = str(error.value)
    assert str(path) in message and "head_dim 96" in message and "4 q heads over 2" in message
    assert "128/7" in message and "--device cpu" in message


def test_qwen3_8b_synthetic_shape() -> None:
    config, types = preset("synthetic:qwen3-8b-q4_0")
    assert (config.architecture, config.n_layers, config.d_model, config.ffn_dim) == (
        "qwen3",
        36,
        4096,
        12288,
    )
    assert (config.n_heads, config.n_kv_heads, config.head_dim, config.vocab_size) == (
        32,
        8,
        128,
        151936,
    )
    assert config.qk_norm and not config.qkv_bias and config.rope.style == "halves"
    assert unsupported(config) is None
    assert types(("blk.3.attn_q.weight", "blk.3.attn_k.weight"), config) == "Q4_0"
    assert types(("output.weight",), config) == "Q8_0"


def test_a_tied_embedding_takes_the_head_type() -> None:
    config, _ = PRESETS["llama-1b-q4_0"]
    mix = TypeMix("Q4_1", "Q8_0")
    assert config.tied_embeddings and mix(("token_embd.weight",), config) == "Q8_0"
    assert mix(("blk.0.ffn_down.weight",), config) == "Q4_1"


def _tensor_names(config: ModelConfig) -> list[str]:
    names = ["token_embd.weight"] + ([] if config.tied_embeddings else ["output.weight"])
    for i in range(config.n_layers):
        roles = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        names += [f"blk.{i}.{role}.weight" for role in roles]
    return names


def test_q4_k_m_synthetic_types_are_llama_quantizes() -> None:
    """The issue's count for the default model requantized by llama-quantize to Q4_K_M: 166
    Q5_0 tensors, 16 Q4_K, 14 Q6_K and 15 Q8_0 (576-wide rows fall back to 32-weight types)."""
    config, types = preset("synthetic:smollm2-135m-q4_k_m")
    counts: dict[str, int] = {}
    for name in _tensor_names(config):
        kind = types((name,), config)
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == {"Q5_0": 166, "Q4_K": 16, "Q6_K": 14, "Q8_0": 15}
    # Layer 0 is one of the first eighth's: its v is stored apart from q and k.
    assert types(("blk.0.attn_v.weight",), config) == "Q8_0"
    assert types(("blk.3.attn_v.weight",), config) == "Q5_0"
    with pytest.raises(EmberError, match="different types"):
        types(("blk.0.attn_q.weight", "blk.0.attn_v.weight"), config)


def test_llama_8b_q4_k_m_types() -> None:
    config, types = preset("synthetic:llama-8b-q4_k_m")
    kinds = {name: types((name,), config) for name in _tensor_names(config)}
    more_bits = [i for i in range(32) if kinds[f"blk.{i}.attn_v.weight"] == "Q6_K"]
    # use_more_bits(i, 32): the first and last 4 layers and every third between.
    assert more_bits == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert all(kinds[f"blk.{i}.ffn_down.weight"] == "Q6_K" for i in more_bits)
    assert kinds["output.weight"] == "Q6_K" and kinds["token_embd.weight"] == "Q4_K"
    assert {kinds[f"blk.{i}.attn_q.weight"] for i in range(32)} == {"Q4_K"}
