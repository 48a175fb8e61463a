"""ember.kernels.quant_mmq against tests/gpu/mmq_reference.py: x quantised bit for bit as the
kernel does, and the GEMM within float32 rounding of the same int8 products."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.quant_gemv import QuantType
from ember.kernels.quant_mmq import (
    MMQ_TYPES,
    MmqTile,
    QuantMmq,
    choose_tile,
    mmq_layouts,
    padded_rows,
    workspace_bytes,
)
from tests.gpu.mmq_reference import MmqReference, float_tolerance, quantize_x
from tests.gpu.quant_data import SENTINEL_BITS, assert_parts_written, random_weight

gpu = pytest.mark.gpu

# (N, K): Llama 8B's projections (q, k/v, o, gate/up, down) and Qwen-like widths, and ragged
# ones: N not a multiple of the tiles' 128 columns (or 1), K of 1, 3, 9 super-blocks (a K loop
# shorter than the stages, and one that wraps their ring).
SHAPES = [
    (4096, 4096),
    (1024, 4096),
    (14336, 4096),
    (4096, 14336),
    (3584, 3584),
    (1003, 256),
    (250, 2304),
    (130, 768),
    (1, 512),
]
# Rows: one, a partial 64-row tile, whole tiles of each, ragged multiples, a prefill.
ROWS = (1, 40, 64, 65, 128, 130, 300, 512)


def run_mmq(
    quant_mmq: QuantMmq,
    weight: DeviceArray,
    quant: QuantType,
    x: npt.NDArray[np.float32],
    stream: Stream,
    tile: MmqTile | None = None,
    repeats: int = 1,
) -> npt.NDArray[np.float32]:
    """y = x @ W.T by the quantising launch and the GEMM's, each replay from a NaN-filled y and
    a workspace of NaN bytes (0xFF: an int8 -1 and float NaN, which rows or units the kernels
    failed to write would show)."""
    m, k = x.shape
    n = weight.shape[0]
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((m, n), np.float32) as dy,
        DeviceArray.empty((workspace_bytes(m, k),), np.uint8) as space,
    ):
        quantize = quant_mmq.quantize_launch(dx, space)
        gemm = quant_mmq.gemm_launch(weight, quant, dx, dy, space, tile=tile)
        for _ in range(repeats):
            space.buffer.memset_d32(0xFFFFFFFF, stream)
            dy.buffer.memset_d32(0xFFFFFFFF, stream)
            quantize(stream)
            gemm(stream)
        stream.synchronize()
        return dy.to_numpy()


def check(got: npt.NDArray[np.float32], reference: MmqReference, k: int, what: str) -> None:
    m = got.shape[0]
    assert np.isfinite(got).all(), f"{what}: outputs left unwritten (NaN) or not finite"
    sub = MmqReference(reference.want[:m], reference.magnitude[:m])
    error = sub.error(got)
    assert error.max() <= float_tolerance(k), (
        f"{what}: worst error {error.max():.3g} of the terms' magnitude (tolerance "
        f"{float_tolerance(k):.3g}) at {np.unravel_index(error.argmax(), error.shape)}"
    )


@gpu
@pytest.mark.parametrize("shape", [(70, 256), (3, 768), (130, 4096), (257, 14336)])
def test_quantize_matches_reference(
    quant_mmq: QuantMmq, stream: Stream, shape: tuple[int, int]
) -> None:
    """Codes and scales bit for bit, sums to float32 rounding, the padding rows zero."""
    m, k = shape
    rng = np.random.default_rng(m + k)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 50, (m, 1))).astype(np.float32)
    x[0, :32] = 0.0
    rows = padded_rows(m)
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((workspace_bytes(m, k),), np.uint8) as space,
    ):
        space.buffer.memset_d32(0xFFFFFFFF, stream)
        quant_mmq.quantize_launch(dx, space)(stream)
        stream.synchronize()
        raw = space.to_numpy()
    codes = raw[: rows * k].view(np.int8).reshape(rows, k)
    records = raw[rows * k :].view(np.float32).reshape(k // 32, rows, 2)
    want = quantize_x(x)
    np.testing.assert_array_equal(codes[:m], want.codes)
    np.testing.assert_array_equal(records[:, :m, 0].T, want.scales)
    np.testing.assert_allclose(records[:, :m, 1].T, want.sums, rtol=1e-5, atol=1e-4)
    assert not codes[m:].any() and not records[:, m:].any(), "padding rows not zero"


@gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("quant", MMQ_TYPES, ids=lambda q: q.name)
def test_mmq_matches_reference(
    quant_mmq: QuantMmq, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    """The tile the wrapper picks, on every shape and M."""
    n, k = shape
    raw = random_weight(quant, n, k, seed=n + k)
    x = np.random.default_rng(k).standard_normal((max(ROWS), k)).astype(np.float32)
    reference = MmqReference.of(raw, quant, x)
    with DeviceArray.from_numpy(raw) as dw:
        for m in ROWS:
            tile = quant_mmq.tile(quant, m, n)
            got = run_mmq(quant_mmq, dw, quant, x[:m], stream)
            check(got, reference, k, f"M {m}, {tile.name}")


@gpu
@pytest.mark.parametrize("tile", list(MmqTile), ids=lambda t: t.name)
@pytest.mark.parametrize("quant", MMQ_TYPES, ids=lambda q: q.name)
def test_every_tile_matches(
    quant_mmq: QuantMmq, stream: Stream, quant: QuantType, tile: MmqTile
) -> None:
    """Each tile on M and N that are not multiples of it, with large activations in a few
    columns (as real prefill has) and each launch replayed."""
    if tile not in quant_mmq.residency[quant]:
        pytest.skip(f"{quant.name} does not run tile {tile.name} on this GPU")
    for n, k in [(1003, 256), (250, 2304), (300, 768), (140, 4096)]:
        raw = random_weight(quant, n, k, seed=n * k)
        x = np.random.default_rng(n).standard_normal((300, k)).astype(np.float32)
        x[:, 7] *= 300.0
        reference = MmqReference.of(raw, quant, x)
        with DeviceArray.from_numpy(raw) as dw:
            for m in (1, 17, 130, 300):
                got = run_mmq(quant_mmq, dw, quant, x[:m], stream, tile, repeats=2)
                check(got, reference, k, f"{n}x{k}, M {m}")


@gpu
def test_wrong_bytes_are_caught(quant_mmq: QuantMmq, stream: Stream) -> None:
    """The check can fail: one flipped code bit in W moves some output past the tolerance."""
    n, k, m = 128, 512, 64
    raw = random_weight(QuantType.Q4_K, n, k, seed=4)
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    reference = MmqReference.of(raw, QuantType.Q4_K, x)
    raw[3, 40] ^= 0x08  # a code of row 3's first super-block
    with DeviceArray.from_numpy(raw) as dw:
        got = run_mmq(quant_mmq, dw, QuantType.Q4_K, x, stream)
    with pytest.raises(AssertionError, match="worst error"):
        check(got, reference, k, "flipped bit")


@gpu
@pytest.mark.parametrize("m", [5, 70, 300])
def test_mmq_writes_its_columns_of_a_wider_y(quant_mmq: QuantMmq, stream: Stream, m: int) -> None:
    """A stack of a Q4_K, a Q6_K and a Q5_K matrix: x quantised once, three GEMMs into one y,
    each part's columns bit for bit what it computes alone, nothing else written."""
    k = 512
    parts = [(QuantType.Q4_K, 96), (QuantType.Q6_K, 42), (QuantType.Q5_K, 130)]
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    width = 3 + sum(n for _, n in parts) + 5
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((m, width), np.float32) as dy,
        DeviceArray.empty((workspace_bytes(m, k),), np.uint8) as space,
    ):
        dy.buffer.memset_d32(SENTINEL_BITS, stream)
        quant_mmq.quantize_launch(dx, space)(stream)
        at = 3
        alone = []
        for i, (quant, n) in enumerate(parts):
            raw = random_weight(quant, n, k, seed=21 + i)
            with DeviceArray.from_numpy(raw) as dw:
                quant_mmq.gemm_launch(dw, quant, dx, dy, space, y_at=at)(stream)
                stream.synchronize()
                alone.append((at, run_mmq(quant_mmq, dw, quant, x, stream)))
            at += n
        got = dy.to_numpy()
    assert_parts_written(got, alone)


@gpu
def test_mmq_checks_arguments(quant_mmq: QuantMmq, context: Context) -> None:
    k, n, m = 512, 64, 3
    row_bytes = QuantType.Q4_K.row_bytes(k)
    with (
        DeviceArray.empty((n, row_bytes), np.uint8) as w,
        DeviceArray.empty((n, QuantType.Q4_0.row_bytes(k)), np.uint8) as w40,
        DeviceArray.empty((m, k), np.float32) as x,
        DeviceArray.empty((m, 96), np.float32) as x96,
        DeviceArray.empty((m, n), np.float32) as y,
        DeviceArray.empty((workspace_bytes(m, k),), np.uint8) as space,
        DeviceArray.empty((workspace_bytes(m, k) + 16,), np.uint8) as spare,
    ):
        small = space.flat_slice(0, workspace_bytes(m, k) - 16)
        with pytest.raises(ValueError, match="workspace of"):
            quant_mmq.quantize_launch(x, small)
        with pytest.raises(ValueError, match="multiple of 256"):
            quant_mmq.quantize_launch(x96, space)
        with pytest.raises(ValueError, match="use quant_gemm"):
            quant_mmq.gemm_launch(w40, QuantType.Q4_0, x, y, space)
        with pytest.raises(ValueError, match="do not fit"):
            quant_mmq.gemm_launch(w, QuantType.Q6_K, x, y, space)
        unaligned = spare.flat_slice(4, 4 + workspace_bytes(m, k))
        with pytest.raises(ValueError, match="16-byte aligned"):
            quant_mmq.gemm_launch(w, QuantType.Q4_K, x, y, unaligned)


# -- planning (no GPU) ------------------------------------------------------------------------


def test_every_tile_fits_an_h100() -> None:
    layouts = mmq_layouts(227 * 1024)
    for (quant, tile), layout in layouts.items():
        assert layout.per_sm >= 1, (quant, tile, layout)
        assert layout.shared_bytes <= 227 * 1024


def test_tiles_that_do_not_fit_are_left_out() -> None:
    """On a GPU of 99 KB a block (sm_86, sm_89) the 128-row tiles do not run."""
    layouts = mmq_layouts(99 * 1024)
    assert all(layouts[q, MmqTile.T128].per_sm == 0 for q in MMQ_TYPES)


def test_prefill_takes_the_tall_tile_where_it_fills_an_h100() -> None:
    both = {MmqTile.T64: 2, MmqTile.T128: 1}
    assert choose_tile(512, 4096, 132, both) is MmqTile.T128
    assert choose_tile(512, 14336, 132, both) is MmqTile.T128
    assert choose_tile(128, 4096, 132, both) is MmqTile.T64
    assert choose_tile(128, 4096, 132, {MmqTile.T128: 1}) is MmqTile.T128


def test_workspace_bytes() -> None:
    assert padded_rows(1) == 128 and padded_rows(128) == 128 and padded_rows(129) == 256
    assert workspace_bytes(130, 512) == 256 * 512 + 256 * 16 * 8
