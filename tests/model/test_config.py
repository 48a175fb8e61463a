"""ModelConfig.from_gguf: the family flags, and the files it refuses rather than run wrong."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.errors import ModelFormatError
from ember.model.config import ModelConfig
from ember.model.gguf_file import GGUFFile, TensorInfo

FIXTURES = Path(__file__).parent.parent / "fixtures" / "families"


def _open(name: str) -> GGUFFile:
    return GGUFFile.open(FIXTURES / f"{name}.gguf")


def _with(gguf: GGUFFile, metadata: dict[str, object] | None = None, **tensors: object) -> GGUFFile:
    """`gguf` with metadata keys set and tensors replaced (None: removed)."""
    infos = dict(gguf.tensors)
    data = dict(gguf._data)
    for name, value in tensors.items():
        name = name.replace("__", ".")
        if value is None:
            del infos[name], data[name]
        else:
            array = np.asarray(value, np.float32)
            infos[name] = TensorInfo(name, GGMLQuantizationType.F32, array.shape, array.nbytes)
            data[name] = array
    return dataclasses.replace(
        gguf, metadata={**gguf.metadata, **(metadata or {})}, tensors=infos, _data=data
    )


def test_features_name_what_each_file_uses() -> None:
    assert ModelConfig.from_gguf(_open("qwen2")).features == ("q/k/v biases", "rope halves (neox)")
    assert ModelConfig.from_gguf(_open("mistral")).features == ("sliding window 5",)
    llama3 = ModelConfig.from_gguf(_open("llama3"))
    assert llama3.features == ("rope frequency factors (rope_freqs)",)
    assert llama3.tensor_names()[-1] == "rope_freqs.weight"


def test_bias_missing_from_one_layer_is_refused() -> None:
    gguf = _with(_open("qwen2"), blk__1__attn_v__bias=None)
    with pytest.raises(ModelFormatError, match=r"no tensor 'blk\.1\.attn_v\.bias'") as error:
        ModelConfig.from_gguf(gguf)
    assert str(gguf.path) in str(error.value) and "every layer or in none" in str(error.value)


def test_a_tensor_the_pass_would_not_read_is_refused() -> None:
    gguf = _with(_open("llama3"), blk__0__attn_output__bias=np.zeros(64))
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.attn_output\.bias' is not used"):
        ModelConfig.from_gguf(gguf)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("qwen2.rope.scaling.type", "yarn", "rope.scaling.type 'yarn' is not supported"),
        ("qwen2.attention.value_length", 8, "value_length 8 differs from key_length 16"),
        ("qwen2.attention.sliding_window", -1, "sliding_window is -1"),
        ("general.architecture", "gemma", "unsupported architecture 'gemma'"),
    ],
)
def test_unsupported_metadata_is_refused(key: str, value: object, message: str) -> None:
    metadata: dict[str, object] = {key: value, "qwen2.rope.scaling.factor": 4.0}
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        ModelConfig.from_gguf(_with(_open("qwen2"), metadata))


def test_rope_frequency_factors_must_be_positive() -> None:
    factors = np.ones(8)
    factors[3] = 0.0
    with pytest.raises(ModelFormatError, match=r"'rope_freqs\.weight' has a factor <= 0"):
        ModelConfig.from_gguf(_with(_open("llama3"), rope_freqs__weight=factors))
