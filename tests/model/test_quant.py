"""`dequantize` against gguf-py's reference: random blocks of every block type (bit for bit),
round trips of random values through gguf-py's quantizers, then the default model's tensors."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from ember.errors import ModelFormatError, ModelNotFoundError
from ember.model.default_model import default_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.quant import SUPPORTED_TYPES, dequantize

T = GGMLQuantizationType

# (300, 512) Q4_0 is 4800 blocks: more than one of dequantize's 4096-block chunks, plus a tail.
SHAPES = [(32,), (3, 64), (7, 96), (2, 3, 128), (300, 512)]
# Relative RMS quantization error a correct round trip stays under, for the types gguf-py can
# quantize (it has no K-quant quantizers).
TOLERANCE = {
    T.F32: 0.0,
    T.F16: 1e-3,
    T.BF16: 1e-2,
    T.Q8_0: 1e-2,
    T.Q4_0: 0.2,
    T.Q4_1: 0.2,
    T.Q5_0: 0.1,
    T.Q5_1: 0.1,
}
ROUND_TRIP_TYPES = sorted(TOLERANCE)
BLOCK_TYPES = sorted(t for t in SUPPORTED_TYPES if GGML_QUANT_SIZES[t][0] > 1)
# Byte offsets of each block type's f16 fields (scales, minimums), from ggml-common.h.
F16_FIELDS = {
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}


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


def random_blocks(
    ggml_type: GGMLQuantizationType, n_blocks: int, seed: int
) -> npt.NDArray[np.uint8]:
    """Random block bytes whose f16 fields are random finite, nonzero halves (any exponent,
    subnormals included): every bit of the quantized parts is exercised, and no NaN or
    infinity hides a wrong weight from the comparison."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, GGML_QUANT_SIZES[ggml_type][1]), dtype=np.uint8)
    for at in F16_FIELDS[ggml_type]:
        halves = rng.integers(1, 0x7C00, n_blocks, dtype=np.uint16)  # below the inf/NaN codes
        halves |= rng.integers(0, 2, n_blocks, dtype=np.uint16) << 15  # either sign
        blocks[:, at : at + 2] = halves.astype("<u2").view(np.uint8).reshape(n_blocks, 2)
    return blocks


def test_supported_types() -> None:
    assert {
        T.F32,
        T.F16,
        T.BF16,
        T.Q8_0,
        T.Q4_0,
        T.Q4_1,
        T.Q5_0,
        T.Q5_1,
        T.Q2_K,
        T.Q3_K,
        T.Q4_K,
        T.Q5_K,
        T.Q6_K,
    } == SUPPORTED_TYPES
    assert set(F16_FIELDS) == set(BLOCK_TYPES)


# 4500 blocks: more than one chunk of every type (4096 blocks of 32 weights, 512 of 256).
@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows, blocks_per_row", [(1, 1), (3, 2), (5, 7), (4500, 1), (9, 500)])
def test_random_blocks_match_gguf_reference_bit_for_bit(
    ggml_type: GGMLQuantizationType, rows: int, blocks_per_row: int
) -> None:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    raw = random_blocks(ggml_type, rows * blocks_per_row, seed=ggml_type.value * 1000 + rows)
    raw = raw.reshape(rows, blocks_per_row * type_size)
    shape = (rows, blocks_per_row * block_size)
    out = dequantize(raw, ggml_type, shape)
    reference = quants.dequantize(raw, ggml_type)
    assert out.dtype == np.float32 and out.shape == shape and out.flags.c_contiguous
    assert np.isfinite(reference).all()
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("ggml_type", ROUND_TRIP_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_matches_gguf_reference(
    ggml_type: GGMLQuantizationType, shape: tuple[int, ...]
) -> None:
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


@pytest.mark.parametrize("ggml_type", ROUND_TRIP_TYPES, ids=lambda t: t.name)
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


@pytest.mark.parametrize("ggml_type", [T.IQ2_XXS, T.TQ1_0, T.I32, T.F64], ids=lambda t: t.name)
def test_unsupported_type(ggml_type: GGMLQuantizationType) -> None:
    with pytest.raises(ModelFormatError, match=ggml_type.name) as error:
        dequantize(np.zeros(1024, dtype=np.uint8), ggml_type, (256,))
    assert "Q4_K" in str(error.value) and "Q8_0" in str(error.value)


def test_wrong_byte_count() -> None:
    raw = encode(random_values((2, 64), seed=1), T.Q8_0)
    with pytest.raises(ModelFormatError, match="needs 170 bytes, got 136"):
        dequantize(raw, T.Q8_0, (5, 32))


def test_row_not_whole_blocks() -> None:
    with pytest.raises(ModelFormatError, match="multiple of the 32-weight block"):
        dequantize(np.zeros(34, dtype=np.uint8), T.Q8_0, (2, 16))
    with pytest.raises(ModelFormatError, match=r"Q4_K tensor of shape \(2, 384\).*256-weight"):
        dequantize(np.zeros(432, dtype=np.uint8), T.Q4_K, (2, 384))


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
