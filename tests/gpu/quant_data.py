"""Random quantised weights for the GPU kernel tests: raw GGUF block bytes, as a model file
holds them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType

from ember.kernels.quant_gemv import QuantType
from ember.model.quant import dequantize
from ember.model.quant_blocks import Floats
from ember.model.quant_k import scale_min_6bit

# Per type: (byte offset, low, high) of each f16 scale field, drawn uniformly so that weights
# spread like real ones (a few hundredths); every other byte (codes, sub-block scales, fifth
# bits) is random. Minimums are negative, as they are where weights centre near zero.
_SCALE_FIELDS: dict[QuantType, tuple[tuple[int, float, float], ...]] = {
    QuantType.Q4_0: ((0, 0.002, 0.02),),
    QuantType.Q4_1: ((0, 0.002, 0.02), (2, -0.15, 0.0)),
    QuantType.Q8_0: ((0, 0.002, 0.02),),
    QuantType.Q5_0: ((0, 0.001, 0.01),),
    QuantType.Q5_1: ((0, 0.001, 0.01), (2, -0.15, 0.0)),
    QuantType.Q4_K: ((0, 0.0001, 0.001), (2, 0.0002, 0.002)),
    QuantType.Q5_K: ((0, 0.00005, 0.0005), (2, 0.0002, 0.002)),
    QuantType.Q6_K: ((208, 0.00002, 0.0002),),
}


def random_weight(quant: QuantType, n: int, k: int, seed: int) -> npt.NDArray[np.uint8]:
    """Raw GGUF bytes [n, row bytes] of random blocks with scales like real weights' (the test
    is skipped where K is not whole blocks of the type)."""
    skip_unless_fits(quant, k)
    rng = np.random.default_rng(seed)
    blocks = n * k // quant.block_weights
    raw = rng.integers(0, 256, (blocks, quant.block_bytes), dtype=np.uint8)
    for at, low, high in _SCALE_FIELDS[quant]:
        field = rng.uniform(low, high, (blocks, 1)).astype(np.float16)
        raw[:, at : at + 2] = field.view(np.uint8)
    return raw.reshape(n, quant.row_bytes(k))


def skip_unless_fits(quant: QuantType, k: int) -> None:
    """Skip a case whose K is not whole blocks of the type (K-quants take multiples of 256)."""
    if k % quant.block_weights:
        pytest.skip(f"{quant.name} rows are whole {quant.block_weights}-weight blocks, K is {k}")


def half_field(blocks: npt.NDArray[np.uint8], at: int) -> npt.NDArray[np.float64]:
    """Each block's fp16 field at byte `at` (blocks: uint8 [n, block bytes]), as float64 [n]."""
    return blocks[:, at : at + 2].copy().view(np.float16)[:, 0].astype(np.float64)


def unit_minimums(
    raw: npt.NDArray[np.uint8], quant: QuantType, n: int, k: int
) -> npt.NDArray[np.float64] | None:
    """Per row and 32-weight unit, the additive term of its weights (weight = scale * code + m)
    for the types whose GEMV applies it to the exact sum of x: Q4_1 (as m + 8 d, its kernel's
    split), Q5_1, Q4_K and Q5_K; None for the others."""
    blocks = raw.reshape(-1, quant.block_bytes)
    if quant is QuantType.Q4_1:
        terms = half_field(blocks, 2) + 8 * half_field(blocks, 0)
    elif quant is QuantType.Q5_1:
        terms = half_field(blocks, 2)
    elif quant in (QuantType.Q4_K, QuantType.Q5_K):
        _, minimums = scale_min_6bit(blocks[:, 4:16])
        terms = -(half_field(blocks, 2)[:, None] * minimums.astype(np.float64))
    else:
        return None
    return terms.reshape(n, k // 32)


def gemm_weights16(raw: npt.NDArray[np.uint8], quant: QuantType, n: int, k: int) -> Floats:
    """The fp16 weights quant_gemm.cu's tensor cores multiply, as float32 [n, k]: each weight
    rounded once from the exact one, except the K-quants' (super_fragment), which round the
    sub-block's scale d * sc and minimum dmin * m to fp16 first and then scale * code - minimum
    once. Their codes come from the decoder itself, on the blocks with d = 1, every scale 1 and
    every minimum 0 (so nothing of the bit layout is written twice)."""
    ggml = GGMLQuantizationType[quant.name]
    exact = dequantize(raw, ggml, (n, k))
    if quant not in (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K):
        return exact.astype(np.float16).astype(np.float32)
    blocks = raw.reshape(-1, quant.block_bytes)
    unit = blocks.copy()

    def half(at: int) -> npt.NDArray[np.float64]:
        return half_field(blocks, at)[:, None]

    def rounded(v: npt.NDArray[np.float64], weights: int) -> npt.NDArray[np.float64]:
        return np.repeat(v.astype(np.float16).astype(np.float64), weights, axis=1)

    one = np.array([1.0], np.float16).view(np.uint8)
    if quant is QuantType.Q6_K:
        unit[:, 192:208] = 1
        unit[:, 208:210] = one
        scale = rounded(half(208) * blocks[:, 192:208].view(np.int8), 16)
        minimum = np.zeros_like(scale)
    else:
        scales, minimums = scale_min_6bit(blocks[:, 4:16])
        unit[:, 0:2], unit[:, 2:4] = one, 0
        unit[:, 4:16] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]  # every scale 1, every minimum 0
        scale = rounded(half(0) * scales, 32)
        minimum = rounded(half(2) * minimums, 32)
    codes = dequantize(unit, ggml, (blocks.shape[0], quant.block_weights)).astype(np.float64)
    weights = (scale * codes - minimum).astype(np.float16)  # exact in float64, rounded once
    return weights.astype(np.float32).reshape(n, k)


# Filled into y before a product writes part of it: a float no product here gives.
SENTINEL_BITS = 0x7F7F7F7F


def assert_parts_written(
    got: npt.NDArray[np.float32], parts: list[tuple[int, npt.NDArray[np.float32]]]
) -> None:
    """y's columns from each part's first (`at`) are bit for bit its product alone, and the
    columns before the first and after the last part still hold SENTINEL_BITS."""
    for at, alone in parts:
        np.testing.assert_array_equal(got[:, at : at + alone.shape[1]], alone)
    sentinel = np.array([SENTINEL_BITS], np.uint32).view(np.float32)[0]
    first, (last, alone) = parts[0][0], parts[-1]
    assert (got[:, :first] == sentinel).all() and (
        got[:, last + alone.shape[1] :] == sentinel
    ).all()
