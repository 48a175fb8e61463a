"""ember.kernels.quant_gemm against ember.model.quant.dequantize(raw) @ x on random blocks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType

from ember.gpu import Context, Device, DeviceArray, Launch, Stream
from ember.kernels.quant_gemm import (
    DEFAULT_RESIDENCY,
    MAX_SPLITS,
    GemmPlan,
    GemmTile,
    QuantGemm,
    choose_plan,
    fills,
    tile_layouts,
    type_residency,
)
from ember.kernels.quant_gemv import QuantType
from ember.model.quant import dequantize
from tests.gpu.quant_data import (
    SENTINEL_BITS,
    assert_parts_written,
    gemm_weights16,
    random_weight,
)

gpu = pytest.mark.gpu

# (N, K): the small model's projections (q and o; fused q, k, v; gate or up; fused gate and up;
# tied output head; down), Llama 8B's, and ragged ones: N not a multiple of any tile (or 1), K of
# 1, 2, 3, 33 and 65 blocks (a last K step with fewer blocks than the others, and more steps
# than W buffers).
SHAPES = [
    (576, 576),
    (960, 576),
    (1536, 576),
    (3072, 576),
    (49152, 576),
    (576, 1536),
    (4096, 4096),
    (6144, 4096),
    (28672, 4096),
    (4096, 14336),
    (1003, 96),
    (37, 1056),
    (250, 2080),
    (129, 32),
    (1, 64),
]
ROWS = (1, 16, 17, 64, 200, 512)

# The kernel rounds x to fp16 and each weight to fp16 once (relative error at most 2^-11 each;
# the product of two fp16 values is exact in fp32), so every term x*w is off by at most ~2^-10
# of |x*w|: the sum by at most 2^-10 of sum |x*w| = (|x| @ |W|.T). Summing in fp32 (tensor cores
# truncate) and the float32 reference add far less: below 2^-19 of it in a NumPy simulation of
# truncating fp32 accumulation at K 14336. Hence 2^-9. (Random data stays below 2^-13.)
ROUNDED = 2.0**-9
# Against a reference that rounds x and W to fp16 the same way (`gemm_weights16`: the K-quants
# round their sub-block scales first), only the order and precision of
# the fp32 sums differ (below 2^-19 in that simulation), so this bound can be much tighter: a
# block of 32 weights read from the wrong place moves the median output by ~2^-11 of the scale
# at K 14336, and by more at smaller K.
SUMMED = 2.0**-13


@dataclass(frozen=True, slots=True)
class Reference:
    """Products to compare the kernel's rows against, for x's first rows."""

    want: npt.NDArray[np.float32]  # x @ W.T
    want16: npt.NDArray[np.float32]  # the same with x and W rounded to fp16
    scale: npt.NDArray[np.float32]  # |x| @ |W|.T

    @classmethod
    def of(
        cls, raw: npt.NDArray[np.uint8], quant: QuantType, x: npt.NDArray[np.float32]
    ) -> Reference:
        n, k = raw.shape[0], x.shape[1]
        weight = dequantize(raw, GGMLQuantizationType[quant.name], (n, k))
        want = x @ weight.T
        x16 = x.astype(np.float16).astype(np.float32)
        want16 = x16 @ gemm_weights16(raw, quant, n, k).T
        scale = np.abs(x) @ np.abs(weight, out=weight).T
        return cls(want, want16, scale)

    def check(self, got: npt.NDArray[np.float32], what: str) -> None:
        m = got.shape[0]
        assert np.isfinite(got).all(), f"{what}: outputs left unwritten (NaN) or not finite"
        scale = self.scale[:m] + 1e-6
        error = np.abs(got - self.want[:m]) / scale
        assert error.max() <= ROUNDED, f"{what}: worst error {error.max():.3g} of |x| @ |W|.T"
        error16 = np.abs(got - self.want16[:m]) / scale
        assert error16.max() <= SUMMED, (
            f"{what}: worst error {error16.max():.3g} of |x| @ |W|.T against fp16-rounded inputs"
        )


def run_gemm(
    quant_gemm: QuantGemm,
    weight: DeviceArray,
    quant: QuantType,
    x: npt.NDArray[np.float32],
    stream: Stream,
    tile: GemmTile | None = None,
    workspace: DeviceArray | None = None,
    splits: int | None = None,
    repeats: int = 1,
) -> npt.NDArray[np.float32]:
    """y = x @ W.T by one launch, replayed `repeats` times (each from a NaN-filled y)."""
    n = weight.shape[0]
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((x.shape[0], n), np.float32) as dy,
    ):
        launch = quant_gemm.gemm_launch(weight, quant, dx, dy, tile, workspace, splits)
        for _ in range(repeats):
            dy.buffer.memset_d32(0xFFFFFFFF, stream)  # NaN: any output left unwritten fails
            launch(stream)
        stream.synchronize()
        return dy.to_numpy()


@pytest.fixture
def workspace(quant_gemm: QuantGemm, stream: Stream) -> Iterator[DeviceArray]:
    """Zeros, as much as any plan of gemm_launch's own needs."""
    with DeviceArray.empty((quant_gemm.max_workspace_bytes,), np.uint8) as space:
        space.buffer.memset_d32(0, stream)
        yield space


def assert_counters_zero(workspace: DeviceArray) -> None:
    counters = workspace.view((1024,), np.int32).to_numpy()
    assert not counters.any(), f"split counters left at {np.flatnonzero(counters)[:8]}"


@gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_gemm_matches_dequantized_matmul(
    quant_gemm: QuantGemm,
    stream: Stream,
    workspace: DeviceArray,
    quant: QuantType,
    shape: tuple[int, int],
) -> None:
    """The plan gemm_launch picks itself, split-K where it wants, on every shape and M."""
    n, k = shape
    raw = random_weight(quant, n, k, seed=n + k)
    x = np.random.default_rng(k).standard_normal((max(ROWS), k)).astype(np.float32)
    reference = Reference.of(raw, quant, x)
    with DeviceArray.from_numpy(raw) as dw:
        for m in ROWS:
            plan = quant_gemm.plan(m, n, k)
            got = run_gemm(quant_gemm, dw, quant, x[:m], stream, workspace=workspace)
            reference.check(got, f"M {m}, {plan.tile.name} split {plan.splits}")
    assert_counters_zero(workspace)


@gpu
@pytest.mark.parametrize("tile", list(GemmTile), ids=lambda t: t.name)
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_every_tile_matches(
    quant_gemm: QuantGemm, stream: Stream, quant: QuantType, tile: GemmTile
) -> None:
    """Each tile shape on M and N that are not multiples of it, with several M tiles (the
    K-quants on the tiles they run, K whole super-blocks: 1, 3 and 9 K steps, the last more than
    any tile's W stages, so that its ring of stages wraps; on the tiles of 64 and 128 rows each
    super-block in 2 to 8 x steps)."""
    if tile not in quant_gemm.type_residency[quant]:
        pytest.skip(f"{quant.name} does not run tile {tile.name}")
    for n, k in [(1003, 96), (250, 2080), (130, 576), (300, 768), (70, 256), (140, 2304)]:
        if k % quant.block_weights:
            continue
        raw = random_weight(quant, n, k, seed=n * k)
        x = np.random.default_rng(n).standard_normal((300, k)).astype(np.float32)
        reference = Reference.of(raw, quant, x)
        with DeviceArray.from_numpy(raw) as dw:
            for m in (1, 17, 130, 300):
                got = run_gemm(quant_gemm, dw, quant, x[:m], stream, tile, splits=1)
                reference.check(got, f"{n}x{k}, M {m}")


@gpu
@pytest.mark.parametrize("tile", list(GemmTile), ids=lambda t: t.name)
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_split_k_matches(
    quant_gemm: QuantGemm,
    stream: Stream,
    workspace: DeviceArray,
    quant: QuantType,
    tile: GemmTile,
) -> None:
    """K split 2, 3 and 7 ways: K of 65 blocks (steps that do not divide evenly, a short last
    step), K of 3 blocks (more splits than steps: empty splits add zeros), N not a multiple of
    the tile. Each launch runs twice, so a counter it failed to reset would show. K-quants: K
    of 9 super-blocks, on the tiles they run."""
    if tile not in quant_gemm.type_residency[quant]:
        pytest.skip(f"{quant.name} does not run tile {tile.name}")
    for n, k in [(250, 2080), (1003, 96), (300, 2304)]:
        if k % quant.block_weights:
            continue
        raw = random_weight(quant, n, k, seed=n + 7 * k)
        x = np.random.default_rng(k).standard_normal((130, k)).astype(np.float32)
        reference = Reference.of(raw, quant, x)
        with DeviceArray.from_numpy(raw) as dw:
            for splits in (2, 3, 7):
                for m in (17, 130):
                    got = run_gemm(
                        quant_gemm, dw, quant, x[:m], stream, tile, workspace, splits, repeats=2
                    )
                    reference.check(got, f"{n}x{k}, M {m}, {splits} splits")
    assert_counters_zero(workspace)


@gpu
def test_gemm_writes_unaligned_rows(quant_gemm: QuantGemm, stream: Stream) -> None:
    """y 4 bytes past an 8-byte boundary with N even: pairs of outputs are stored one by one."""
    n, k, m = 64, 64, 5
    raw = random_weight(QuantType.Q4_0, n, k, seed=3)
    x = np.random.default_rng(4).standard_normal((m, k)).astype(np.float32)
    reference = Reference.of(raw, QuantType.Q4_0, x)
    with (
        DeviceArray.from_numpy(raw) as dw,
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((m * n + 1,), np.float32) as space,
    ):
        space.buffer.memset_d32(0xFFFFFFFF, stream)
        dy = space.view((m, n), np.float32, offset_bytes=4)
        quant_gemm.gemm(dw, QuantType.Q4_0, dx, dy, stream)
        stream.synchronize()
        reference.check(dy.to_numpy(), "unaligned y")


@gpu
def test_gemm_launch_replays(quant_gemm: QuantGemm, stream: Stream) -> None:
    n, k, m = 200, 128, 40
    raw = random_weight(QuantType.Q8_0, n, k, seed=5)
    x = np.random.default_rng(6).standard_normal((m, k)).astype(np.float32)
    reference = Reference.of(raw, QuantType.Q8_0, x)
    with (
        DeviceArray.from_numpy(raw) as dw,
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((m, n), np.float32) as dy,
    ):
        launch = quant_gemm.gemm_launch(dw, QuantType.Q8_0, dx, dy)
        assert isinstance(launch, Launch)
        assert launch.grid == quant_gemm.plan(m, n, k, split=False).grid(m, n)
        for _ in range(2):
            dy.buffer.memset_d32(0xFFFFFFFF, stream)
            launch(stream)
            stream.synchronize()
            reference.check(dy.to_numpy(), "replayed launch")


@gpu
def test_gemm_checks_arguments(quant_gemm: QuantGemm, context: Context) -> None:
    row_bytes = QuantType.Q8_0.row_bytes(64)
    with (
        DeviceArray.empty((8, row_bytes), np.uint8) as w,
        DeviceArray.empty((8 * row_bytes + 16,), np.uint8) as spare,
        DeviceArray.empty((3, 64), np.float32) as x,
        DeviceArray.empty((3, 8), np.float32) as y,
        DeviceArray.empty((3, 64), np.float16) as x16,
        DeviceArray.empty((0, 64), np.float32) as x0,
        DeviceArray.empty((0, 8), np.float32) as y0,
    ):
        with pytest.raises(TypeError, match="float16"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x16, y)
        with pytest.raises(ValueError, match="do not fit"):
            quant_gemm.gemm_launch(w, QuantType.Q4_0, x, y)
        with pytest.raises(ValueError, match="at least one row"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x0, y0)
        unaligned = spare.flat_slice(2, 2 + 8 * row_bytes)
        view = DeviceArray(unaligned.buffer, (8, row_bytes), w.dtype)
        with pytest.raises(ValueError, match="aligned"):
            quant_gemm.gemm_launch(view, QuantType.Q8_0, x, y)
        with pytest.raises(ValueError, match="workspace of"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x, y, GemmTile.S16, splits=2)
        small = spare.flat_slice(0, 64)
        with pytest.raises(ValueError, match="workspace of"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x, y, GemmTile.S16, small, 2)
        with pytest.raises(ValueError, match="16-byte aligned"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x, y, GemmTile.S16, unaligned, 2)
        with pytest.raises(ValueError, match="splits K"):
            quant_gemm.gemm_launch(w, QuantType.Q8_0, x, y, GemmTile.S16, spare, MAX_SPLITS + 1)


@gpu
def test_layouts_fit_the_device(quant_gemm: QuantGemm, device: Device) -> None:
    """Every tile runs on the GPUs Ember ships cubins for (all within 99 KB of shared memory),
    and each launch asks for the dynamic shared memory its kernel was built with."""
    assert set(quant_gemm.residency) == set(GemmTile)
    for (quant, tile), layout in quant_gemm.layouts.items():
        if tile is GemmTile.W64 and quant in (QuantType.Q5_K, QuantType.Q6_K):
            assert layout.per_sm == 0, f"{quant.name} {tile.name} is built as a trap"
            continue
        assert 0 < layout.shared_bytes <= device.max_shared_memory_per_block_optin
        assert layout.per_sm >= 1, (quant, tile)


# -- planning (no GPU) ------------------------------------------------------------------------

LLAMA_8B = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


@pytest.mark.parametrize("m", [9, 16, 32, 64, 128, 256, 512, 2048])
def test_plans_fill_an_h100_on_llama_8b(m: int) -> None:
    for n, k in LLAMA_8B:
        plan = choose_plan(m, n, k, 132)
        assert fills(plan.blocks(m, n), 132), (m, n, plan)
        assert plan.tile.rows <= max(2 * m, 16) or m <= 16
        assert plan.splits <= plan.tile.steps(k)


def test_plans_split_small_n() -> None:
    """The small model's 576-column projections at batch 64 get several times the blocks that
    one unsplit 64-row tile per 64 columns gave (9)."""
    plan = choose_plan(64, 576, 576, 132)
    assert plan.blocks(64, 576) >= 64
    assert plan.splits > 1


def test_k_quant_prefill_takes_tall_tiles_on_an_h100() -> None:
    """Issue 19: a K-quant prefill ran S32 tiles (a super-block's x tile fit no other); it now
    takes the 64-row tiles, as the 32-weight types do, on Llama 8B's products at 512 rows."""
    layouts = tile_layouts(227 * 1024)
    for quant in (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K):
        residency = type_residency(layouts, quant)
        for n, k in LLAMA_8B:
            plan = choose_plan(512, n, k, 132, residency)
            assert plan.tile in (GemmTile.T64, GemmTile.W64), (quant, n, k, plan)
            assert fills(plan.blocks(512, n), 132)


def test_wide_deep_products_take_256_column_tiles_above_256_rows() -> None:
    """Llama-8B's gate/up in a 512-token prefill gets W64 (measured faster there); at 256 rows
    and below, and for the small model's LM head (K 576), T64 stays."""
    assert choose_plan(512, 28672, 4096, 132).tile is GemmTile.W64
    assert choose_plan(257, 28672, 4096, 132).tile is GemmTile.W64
    assert choose_plan(256, 28672, 4096, 132).tile is GemmTile.T64
    assert choose_plan(512, 49152, 576, 132).tile is GemmTile.T64
    assert choose_plan(512, 4096, 14336, 132).tile is GemmTile.T64


def test_plan_without_workspace_never_splits() -> None:
    for m in (16, 64, 512):
        for n, k in [*LLAMA_8B, (576, 576)]:
            assert choose_plan(m, n, k, 132, split=False).splits == 1


def test_plan_uses_only_resident_tiles() -> None:
    residency = {GemmTile.M64: 2, GemmTile.M16: 2}
    for m in (16, 64, 512):
        assert choose_plan(m, 4096, 4096, 132, residency).tile in residency


def test_workspace_bytes() -> None:
    plan = GemmPlan(GemmTile.T64, 4)
    assert plan.workspace_bytes(100, 300) == 4096 + 4 * (2 * 3) * 64 * 128 * 4
    assert GemmPlan(GemmTile.T64).workspace_bytes(100, 300) == 0
    bound = 4096 + 128 * 1024 * 132  # QuantGemm.max_workspace_bytes on an H100
    for m in (9, 16, 32, 48, 64, 128, 256, 512, 1024):
        for n, k in [*LLAMA_8B, (576, 576), (960, 576), (3072, 576), (576, 1536), (49152, 576)]:
            assert choose_plan(m, n, k, 132).workspace_bytes(m, n) <= bound


def test_default_residency_covers_every_tile() -> None:
    assert set(DEFAULT_RESIDENCY) == set(GemmTile)
    assert len({t.value for t in GemmTile}) == len(GemmTile)
    assert [t.id for t in GemmTile] == list(range(len(GemmTile)))


@gpu
@pytest.mark.parametrize("m", [5, 40, 300])
def test_gemm_writes_its_columns_of_a_wider_y(
    quant_gemm: QuantGemm, stream: Stream, workspace: DeviceArray, m: int
) -> None:
    """A stack of a Q4_K and a Q6_K matrix as two launches into one y (split-K where the plan
    splits): each part's columns bit for bit what it computes alone, nothing else written."""
    k = 512
    parts = [(QuantType.Q4_K, 96), (QuantType.Q6_K, 42)]
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    width = 3 + sum(n for _, n in parts) + 5
    with DeviceArray.from_numpy(x) as dx, DeviceArray.empty((m, width), np.float32) as dy:
        dy.buffer.memset_d32(SENTINEL_BITS, stream)
        at = 3
        alone = []
        for i, (quant, n) in enumerate(parts):
            raw = random_weight(quant, n, k, seed=21 + i)
            with DeviceArray.from_numpy(raw) as dw:
                alone.append((at, run_gemm(quant_gemm, dw, quant, x, stream, None, workspace)))
                quant_gemm.gemm_launch(dw, quant, dx, dy, workspace=workspace, y_at=at)(stream)
                stream.synchronize()
            at += n
        got = dy.to_numpy()
    assert_parts_written(got, alone)
    assert_counters_zero(workspace)
