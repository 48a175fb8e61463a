"""NumPy reference for quant_mmq.cu: x quantised to int8 per 32 values exactly as its
quantize_x_q8 does, and the products its GEMM forms from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ember.kernels.quant_gemv import QuantType
from ember.model.quant import dequantize
from tests.gpu.quant_data import unit_minimums

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QuantizedX:
    """x [m, k] as the kernel quantises it: int8 codes, and per row and 32-value unit the scale
    d and the float32 sum of the unit's values."""

    codes: npt.NDArray[np.int8]  # [m, k]
    scales: F32  # [m, k / 32]
    sums: F32  # [m, k / 32]

    @property
    def seen(self) -> F64:
        """x as the int8 products see it: code * d, in float64 (exact)."""
        m, k = self.codes.shape
        units = self.codes.reshape(m, k // 32, 32).astype(np.float64)
        return (units * self.scales[:, :, None].astype(np.float64)).reshape(m, k)


def quantize_x(x: F32) -> QuantizedX:
    """quant_mmq.cu's quantize_x_q8 (quant_gemv.cu's rounding): d = max|x| / 127 with its two
    lowest mantissa bits cleared, q = x * (127 / max|x|) (the quotient rounded to float32, the
    product exact) rounded to nearest even, as the kernel's fma onto 1.5 * 2^23 rounds it; a
    unit whose values all lie below 1e-30 in magnitude is zeros."""
    m, k = x.shape
    units = x.reshape(m, k // 32, 32)
    amax = np.abs(units).max(axis=2)
    zero = amax < np.float32(1e-30)
    bits = (amax * (np.float32(1) / np.float32(127))).view(np.uint32) & np.uint32(0xFFFFFFFC)
    scales = np.where(zero, np.float32(0), bits.view(np.float32)).astype(np.float32)
    inverse = np.where(zero, np.float32(0), np.float32(127) / np.where(zero, 1, amax))
    codes = np.rint(units.astype(np.float64) * inverse[:, :, None].astype(np.float64))
    assert np.abs(codes).max() <= 127
    sums = units.sum(axis=2, dtype=np.float64).astype(np.float32)
    return QuantizedX(codes.astype(np.int8).reshape(m, k), scales, sums)


@dataclass(frozen=True, slots=True)
class MmqReference:
    """What the kernel computes for one weight and x, in float64, and the magnitude of the
    terms its float32 arithmetic rounds (each output's error is relative to it)."""

    want: F64  # [m, n]
    magnitude: F64  # [m, n]

    @classmethod
    def of(cls, raw: npt.NDArray[np.uint8], quant: QuantType, x: F32) -> MmqReference:
        """sum_u d_x * (scale * isum) + m_u * sum(x_u): the int8 x's product with the
        dequantised weights, its additive terms (Q4_K, Q5_K) moved onto x's exact unit sums."""
        n, k = raw.shape[0], x.shape[1]
        weight = dequantize(raw, GGMLQuantizationType[quant.name], (n, k)).astype(np.float64)
        q = quantize_x(x)
        seen = q.seen
        want = seen @ weight.T
        magnitude = np.abs(seen) @ np.abs(weight).T
        minimums = unit_minimums(raw, quant, n, k)
        if minimums is not None:
            m = x.shape[0]
            seen_sums = seen.reshape(m, k // 32, 32).sum(axis=2)
            want += (q.sums.astype(np.float64) - seen_sums) @ minimums.T
            # The scaled codes alone (weight - m) and the additive terms alone.
            unit_abs = np.abs(x.astype(np.float64)).reshape(m, k // 32, 32).sum(axis=2)
            magnitude += np.abs(seen) @ np.repeat(np.abs(minimums), 32, axis=1).T
            magnitude += unit_abs @ np.abs(minimums).T
        return cls(want, magnitude)

    def error(self, got: npt.NDArray[np.float32]) -> F64:
        """Each output's distance from `want`, relative to its magnitude."""
        return np.abs(got.astype(np.float64) - self.want) / (self.magnitude + 1e-30)


def float_tolerance(k: int) -> float:
    """The kernel's float32 rounding relative to the terms' magnitude: per unit a product of
    scales and two fmas (Q6_K: two products, two fmas), each rounded once, summed over K / 32
    units; twice that for slack."""
    return 2 * (3 * (k // 32) + 4) * 2.0**-24
