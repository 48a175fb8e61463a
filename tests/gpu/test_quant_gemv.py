"""ember.kernels.quant_gemv against float64 NumPy on random blocks.

The kernel quantises x to int8 per 32-value block (q = rint(x * 127 / max|x|), x ~ q * d), so
it is checked twice: against the same quantisation done here (only float32 rounding may differ),
and against the unquantised product within the bound that quantisation allows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType

from ember.gpu import Context, Device, DeviceArray, Stream
from ember.kernels.binaries import load_family
from ember.kernels.quant_gemv import QuantGemv, QuantType
from ember.model.quant import dequantize
from tests.gpu.quant_data import SENTINEL_BITS, assert_parts_written, random_weight, unit_minimums

pytestmark = pytest.mark.gpu

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

# (N, K): the small model's projections and tied head (K 576: rows 4 or 8 bytes off 16-byte
# alignment), Llama 8B's (aligned rows, 16 and 56 stages of 256 weights), and ragged ones: N
# not a multiple of a thread block's 32 rows, K of 3, 20 and 33 blocks (a short last stage;
# rows 2 bytes off alignment for the 18- and 34-byte types, 640 aligned for Q4_1 only).
SHAPES = [
    (1536, 576),
    (576, 1536),
    (49152, 576),
    (4096, 4096),
    (14336, 4096),
    (4096, 14336),
    (1003, 96),
    (70, 640),
    (37, 1056),
]
# Every batch tier (1, 2, 4, 8), full and partly used.
BATCHES = (1, 2, 3, 4, 5, 8)
# The float32 arithmetic after the exact integer dots: one rounded fma per block, summed over
# at most K / 32 = 448 blocks, each sum relative error 2^-24: 448 * 6e-8 < 5e-5.
FLOAT_TOLERANCE = 5e-5
# x = q * d + e with |e| <= d / 2 and d = max|x| / 127 (to 22 bits, and 1 / d to float32):
# |e| <= max|x| / 254 * (1 + 2e-4).
QUANT_TOLERANCE = 1.0002 / 254


def quantize_x(x: F32) -> tuple[F64, F64]:
    """(x as the kernel sees it, max|x| of each value's block), in float64: the kernel's int8
    quantisation, done with the same float32 operations."""
    m, k = x.shape
    blocks = x.reshape(m, k // 32, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    zero = amax < np.float32(1e-30)
    scale = (amax * (np.float32(1) / np.float32(127))).view(np.uint32) & np.uint32(0xFFFFFFFC)
    d = np.where(zero, np.float32(0), scale.view(np.float32))
    inverse = np.where(zero, np.float32(0), np.float32(127) / np.where(zero, 1, amax))
    # x * inverse is exact in float64; the kernel's fma rounds it once, to nearest even.
    q = np.rint(blocks.astype(np.float64) * inverse.astype(np.float64))
    assert np.abs(q).max() <= 127
    seen = (q * d.astype(np.float64)).reshape(m, k)
    return seen, np.broadcast_to(amax, blocks.shape).reshape(m, k).astype(np.float64)


class Reference:
    """One weight's float64 references for a given x."""

    def __init__(self, raw: npt.NDArray[np.uint8], quant: QuantType, n: int, k: int) -> None:
        self.weight = dequantize(raw, GGMLQuantizationType[quant.name], (n, k)).T.astype(np.float64)
        self.magnitude = np.abs(self.weight)
        # The formats whose kernel applies a per-unit term to the exact sum of x.
        self.offsets = unit_minimums(raw, quant, n, k)

    def check(self, got: F32, x: F32, label: str) -> None:
        x64 = x.astype(np.float64)
        seen, _ = quantize_x(x)
        # What the kernel computes, and the magnitudes its float32 roundings are relative to.
        exact = seen @ self.weight
        scale = (np.abs(seen) + np.abs(x64)) @ self.magnitude
        if self.offsets is not None:
            blocks = (x.shape[0], x.shape[1] // 32, 32)
            exact += (x64 - seen).reshape(blocks).sum(axis=2) @ self.offsets.T
            scale += np.abs(x64).reshape(blocks).sum(axis=2) @ np.abs(self.offsets).T
        error = np.abs(got - exact) / (scale + 1e-30)
        assert np.all(error <= FLOAT_TOLERANCE), (
            f"{label}: worst float32 error {error.max():.3g} of the magnitudes"
        )
        self.check_quantised(got, x, label)

    def bound(self, x: F32) -> tuple[F64, F64]:
        """(x @ W.T in float64, how far the kernel may be from it: what the int8 quantisation
        of x and float32 arithmetic allow)."""
        x64 = x.astype(np.float64)
        _, amax = quantize_x(x)
        bound = (amax * QUANT_TOLERANCE + FLOAT_TOLERANCE * np.abs(x64)) @ self.magnitude
        return x64 @ self.weight, bound

    def check_quantised(self, got: F32 | F64, x: F32, label: str, slack: F64 | None = None) -> None:
        """The product with x itself, within what the quantisation of x allows (plus `slack`)."""
        exact, bound = self.bound(x)
        if slack is not None:
            bound = bound + slack
        excess = np.abs(got - exact) / bound
        assert np.all(excess <= 1), f"{label}: beyond the int8 bound by {excess.max():.3g}x"


def random_x(batch: int, k: int, seed: int) -> F32:
    """Normal values, one block of zeros (its scale is 0) and one with an outlier (its other
    values quantise coarsely), as activations have."""
    x = np.random.default_rng(seed).standard_normal((batch, k)).astype(np.float32)
    x[0, :32] = 0.0
    x[-1, k - 32] = 300.0
    return x


def run_gemv(
    gemv: QuantGemv, stream: Stream, dw: DeviceArray, quant: QuantType, x: F32, n: int
) -> tuple[F32, int]:
    """y, and the threads per block the launch used."""
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((x.shape[0], n), np.float32) as dy,
    ):
        dy.buffer.memset_d32(0xFFFFFFFF)  # NaN: any output left unwritten fails
        launch = gemv.gemv_launch(dw, quant, dx, dy)
        launch(stream)
        stream.synchronize()
        out: F32 = dy.to_numpy()
        return out, launch.block[0]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_gemv_matches_float64(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    n, k = shape
    raw = random_weight(quant, n, k, seed=n + k)
    ref = Reference(raw, quant, n, k)
    with DeviceArray.from_numpy(raw) as dw:
        for batch in BATCHES:
            x = random_x(batch, k, seed=k + batch)
            got, _ = run_gemv(quant_gemv, stream, dw, quant, x, n)
            ref.check(got, x, f"batch {batch}")


@pytest.fixture
def small_shared(context: Context, device: Device) -> Iterator[QuantGemv]:
    # Its own module: the shared-memory limit is set on the module's functions.
    family = QuantGemv(load_family("quant_gemv", device), 48 * 1024, device.multiprocessor_count)
    yield family
    family.unload()


@pytest.mark.parametrize("k", [2048, 3104], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_gemv_with_fewer_warps(
    small_shared: QuantGemv, stream: Stream, quant: QuantType, k: int
) -> None:
    """With 48 KB of shared memory a thread block gets 2 or 4 warps instead of 8."""
    n = 300
    raw = random_weight(quant, n, k, seed=7)
    ref = Reference(raw, quant, n, k)
    with DeviceArray.from_numpy(raw) as dw:
        for batch in (1, 8):
            x = random_x(batch, k, seed=batch)
            got, threads = run_gemv(small_shared, stream, dw, quant, x, n)
            assert threads < 256
            ref.check(got, x, f"batch {batch}")


# (n, k, the warps a block gets on a GPU of `sms` SMs at batch 1): a grid no larger than the
# SMs gets 16-warp blocks, one that needs every SM 3 to 8 times over gets 2- or 4-warp blocks.
def _width_cases(sms: int) -> list[tuple[int, int, int]]:
    return [(32 * sms, 4096, 16), (32 * 4 * sms, 1024, 4), (32 * 7 * sms, 1024, 2)]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["16 warps", "4 warps", "2 warps"])
def test_gemv_block_width_follows_the_grid(
    quant_gemv: QuantGemv, device: Device, stream: Stream, case: int
) -> None:
    """Every block width the launch picks computes the same product (Q4_0, batch 1 and 2)."""
    n, k, warps = _width_cases(device.multiprocessor_count)[case]
    quant = QuantType.Q4_0
    raw = random_weight(quant, n, k, seed=n)
    ref = Reference(raw, quant, n, k)
    with DeviceArray.from_numpy(raw) as dw:
        for batch in (1, 2):
            x = random_x(batch, k, seed=batch)
            got, threads = run_gemv(quant_gemv, stream, dw, quant, x, n)
            assert threads == 32 * warps
            ref.check(got, x, f"{warps} warps, batch {batch}")


def test_gemv_propagates_nan(quant_gemv: QuantGemv, stream: Stream) -> None:
    n, k = 64, 512
    raw = random_weight(QuantType.Q4_0, n, k, seed=3)
    x = np.ones((1, k), np.float32)
    x[0, 300] = np.nan
    with DeviceArray.from_numpy(raw) as dw:
        got, _ = run_gemv(quant_gemv, stream, dw, QuantType.Q4_0, x, n)
    assert np.all(np.isnan(got))


def test_gemv_checks_arguments(quant_gemv: QuantGemv, context: Context) -> None:
    row_bytes = QuantType.Q8_0.row_bytes(64)
    with (
        DeviceArray.empty((8, row_bytes), np.uint8) as w,
        DeviceArray.empty((8 * row_bytes + 16,), np.uint8) as spare,
        DeviceArray.empty((1, 64), np.float32) as x,
        DeviceArray.empty((9, 64), np.float32) as x9,
        DeviceArray.empty((1, 8), np.float32) as y,
        DeviceArray.empty((1, 64), np.float16) as x16,
    ):
        with pytest.raises(TypeError, match="float16"):
            quant_gemv.gemv(w, QuantType.Q8_0, x16, y)
        with pytest.raises(ValueError, match="do not fit"):
            quant_gemv.gemv(w, QuantType.Q4_0, x, y)
        with pytest.raises(ValueError, match="batch of 1 to 8"):
            quant_gemv.gemv(w, QuantType.Q8_0, x9, y)
        unaligned = spare.flat_slice(2, 2 + 8 * row_bytes)
        view = DeviceArray(unaligned.buffer, (8, row_bytes), w.dtype)
        with pytest.raises(ValueError, match="aligned"):
            quant_gemv.gemv(view, QuantType.Q8_0, x, y)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_gemv_writes_its_columns_of_a_wider_y(
    quant_gemv: QuantGemv, stream: Stream, batch: int
) -> None:
    """A stack of a Q4_K and a Q6_K matrix (q|k beside v, as llama.cpp's Q4_K_M files store
    them) as two launches into one y: each part's columns bit for bit what it computes alone,
    and nothing else written (the columns around them keep their sentinel)."""
    k = 512
    parts = [(QuantType.Q4_K, 96), (QuantType.Q6_K, 40)]
    x = random_x(batch, k, seed=batch)
    width = 3 + sum(n for _, n in parts) + 5
    with DeviceArray.from_numpy(x) as dx, DeviceArray.empty((batch, width), np.float32) as dy:
        dy.buffer.memset_d32(SENTINEL_BITS, stream)
        at = 3
        alone = []
        for i, (quant, n) in enumerate(parts):
            raw = random_weight(quant, n, k, seed=11 + i)
            with DeviceArray.from_numpy(raw) as dw:
                alone.append((at, run_gemv(quant_gemv, stream, dw, quant, x, n)[0]))
                quant_gemv.gemv_launch(dw, quant, dx, dy, y_at=at)(stream)
                stream.synchronize()
            at += n
        got = dy.to_numpy()
    assert_parts_written(got, alone)
