"""What the CUDA backend refuses, checked before any GPU work (so on the CPU): files whose
attention shape has no compiled kernel name the file, the shape and the way out. And the
synthetic shapes' type mixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import ModelFormatError
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
