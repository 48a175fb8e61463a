"""`dequantize` against gguf-py's reference: random data of every supported type, then the
default model's own tensors."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType, quants

from ember.errors import ModelFormatError, ModelNotFoundError
from ember.model.default_model import default_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.quant import SUPPORTED_TYPES, dequantize

T = GGMLQuantizationType

# (300, 512) Q4_0 is 4800 blocks: more than one of dequantize's 4096-block chunks, plus a tail.
SHAPES = [(32,), (3, 64), (7, 96), (2, 3, 128), (300, 512)]
# Relative RMS quantization error a correct round trip stays under.
TOLERANCE = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 1e-2, T.Q8_0: 1e-2, T.Q4_0: 0.2, T.Q4_1: 0.2}


def encode(
    values: npt.NDArray[np.float32], ggml_type: GGMLQuantizationType
) -> npt.NDArray[np.generic]:
    """`values` as GGUFReader presents the type: typed for F32/F16, else rows of block bytes."""
    if ggml_type == T.F32:
        return values.astype(np.float32)
    if ggml_type == T.F16:
        return values.astype(np.float16)
    return quants.quantize(values, ggml_type)


def random_values(shape: tuple[int, ...], seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    # Per-row scale and offset so blocks differ in both d and the Q4_1 minimum.
    scale = rng.uniform(0.01, 3.0, size=(*shape[:-1], 1))
    offset = rng.uniform(-1.0, 1.0, size=(*shape[:-1], 1))
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


def test_supported_types() -> None:
    assert {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1} == SUPPORTED_TYPES


@pytest.mark.parametrize("ggml_type", sorted(SUPPORTED_TYPES), ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_gguf_reference(ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    values = random_values(shape, seed=100 * ggml_type.value + SHAPES.index(shape))
    raw = encode(values, ggml_type)
    out = dequantize(raw, ggml_type, shape)
    reference = quants.dequantize(raw, ggml_type)
    assert out.dtype == np.float32
    assert out.shape == shape
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference.reshape(shape))
    error = np.sqrt(np.mean((out - values) ** 2) / np.mean(values**2))
    assert error <= TOLERANCE[ggml_type]


@pytest.mark.parametrize("ggml_type", sorted(SUPPORTED_TYPES), ids=lambda t: t.name)
def test_accepts_flat_bytes(ggml_type: GGMLQuantizationType) -> None:
    shape = (5, 64)
    raw = encode(random_values(shape, seed=7), ggml_type)
    flat = np.frombuffer(raw.tobytes(), dtype=np.uint8)
    np.testing.assert_array_equal(
        dequantize(flat, ggml_type, shape), dequantize(raw, ggml_type, shape)
    )


def test_f32_is_a_view_of_read_only_data() -> None:
    raw = random_values((4, 8), seed=3)
    raw.flags.writeable = False
    out = dequantize(raw, T.F32, (4, 8))
    assert np.shares_memory(out, raw)
    np.testing.assert_array_equal(out, raw)


@pytest.mark.parametrize("ggml_type", [T.Q5_K, T.I32, T.F64], ids=lambda t: t.name)
def test_unsupported_type(ggml_type: GGMLQuantizationType) -> None:
    with pytest.raises(ModelFormatError, match=ggml_type.name) as error:
        dequantize(np.zeros(1024, dtype=np.uint8), ggml_type, (256,))
    assert "Q4_1" in str(error.value) and "Q8_0" in str(error.value)


def test_wrong_byte_count() -> None:
    raw = encode(random_values((2, 64), seed=1), T.Q8_0)
    with pytest.raises(ModelFormatError, match="needs 170 bytes, got 136"):
        dequantize(raw, T.Q8_0, (5, 32))


def test_row_not_whole_blocks() -> None:
    with pytest.raises(ModelFormatError, match="multiple of the 32-weight block"):
        dequantize(np.zeros(34, dtype=np.uint8), T.Q8_0, (2, 16))


@pytest.fixture(scope="module")
def model() -> GGUFFile:
    try:
        return GGUFFile.open(default_model_path())
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "blk.29.attn_k.weight"])
def test_default_model_q4_1_matrix(model: GGUFFile, name: str) -> None:
    info = model.tensors[name]
    assert info.ggml_type == T.Q4_1
    raw = model.raw(name)
    out = dequantize(raw, info.ggml_type, info.shape)
    np.testing.assert_array_equal(out, quants.dequantize(raw, T.Q4_1))


def test_default_model_q8_0_embedding(model: GGUFFile) -> None:
    info = model.tensors["token_embd.weight"]
    assert info.ggml_type == T.Q8_0
    assert info.shape == (49152, 576)
    raw = model.raw("token_embd.weight")
    # Row slices rather than the whole table: fresh memory is slow to fault in on small test
    # machines, and slices of one size reuse their allocations. Every row is still compared.
    for start in range(0, info.shape[0], 2048):
        rows = raw[start : start + 2048]
        out = dequantize(rows, info.ggml_type, (rows.shape[0], info.shape[1]))
        np.testing.assert_array_equal(out, quants.dequantize(rows, T.Q8_0))
