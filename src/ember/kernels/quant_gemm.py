"""Launch wrapper for quant_gemm.cu: y = x @ W.T on tensor cores, W a GGUF tensor of a
QuantType, for prefill and decode batches too large for quant_gemv. A K-quant's super-block is
one K step of W; on the tiles of 64 and 128 rows its x goes in 64- or 32-weight parts
(quant_gemm.cu's x_step_units), so it runs the same tiles as the 32-weight types wherever they
fit the GPU's shared memory.

A launch is planned as a tile shape and a number of K splits. Split-K launches need a
workspace: zero-filled device memory of `QuantGemm.max_workspace_bytes` (or, sized tighter, the
most `workspace_bytes(m, n, k)` over the products it will run), whose counters every launch
leaves at zero. Launches that share a workspace must run one after another (one stream), never
at once. Without a workspace a launch is never split.

Batch-invariant mode (`invariant_plan`, docs/batch_invariance.md): the tile is one of
INVARIANT_TILES by rows, and K is cut into shares fixed by the weight's shape, run either as
splits or as slices of one block (quant_gemm.cu: the same bits), so a row of y does not depend
on how many rows run or where it sits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ember.errors import EmberError
from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Dim3, Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface
from ember.kernels.quant_gemv import BLOCK_WEIGHTS, QuantType, check_fit, check_operands

_INTERFACE: Final = family_interface("quant_gemm")
_THREADS: Final = _INTERFACE.constant("threads")  # every tile shape runs this many
_MAX_GRID_YZ: Final = 65535
_SHARED_RESERVED: Final = 1024  # the driver's own shared memory per block
_INDEX_LIMIT: Final = 2**31  # the kernel indexes W's bytes and x's elements in 32 bits

MAX_SPLITS: Final = 16
# Workspace: one int32 counter per tile of a split launch, then the splits' partial sums.
_COUNTERS: Final = 1024
_PARTIALS_OFFSET: Final = 4 * _COUNTERS
# The last split of a tile reads every split's sums alone: capping them per tile keeps that
# tail within about a microsecond.
_FIXUP_BYTES: Final = 128 * 1024
# A split shorter than this many K steps would spend more on filling its pipeline than it saves.
_MIN_SPLIT_STEPS: Final = 2


class GemmTile(Enum):
    """A tile shape of quant_gemm.cu: (its ID there, rows of x, rows of W, quant blocks per K
    step) per block; the name is the kernel suffix."""

    # The first shapes, kept to compare against (quant_gemm.cu says how they differ).
    M16 = (0, 16, 32, 4)
    M32 = (1, 32, 32, 4)
    M64 = (2, 64, 64, 2)
    M128 = (3, 128, 128, 1)
    # Decode of up to 16 or 32 rows: bound by reading W.
    S16 = (4, 16, 128, 2)
    S32 = (5, 32, 128, 2)
    # 33-128 rows.
    T64 = (6, 64, 128, 2)
    W64 = (7, 64, 256, 2)
    # Prefill.
    T128 = (8, 128, 128, 1)
    W128 = (9, 128, 256, 1)

    @property
    def id(self) -> int:
        return self.value[0]

    @property
    def rows(self) -> int:
        return self.value[1]

    @property
    def cols(self) -> int:
        return self.value[2]

    @property
    def step_blocks(self) -> int:
        return self.value[3]

    def steps(self, k: int) -> int:
        return -(-(k // BLOCK_WEIGHTS) // self.step_blocks)

    def grid(self, m: int, n: int, splits: int = 1) -> Dim3:
        return (-(-m // self.rows), -(-n // self.cols), splits)

    def tiles(self, m: int, n: int) -> int:
        grid = self.grid(m, n)
        return grid[0] * grid[1]

    def blocks(self, m: int, n: int) -> int:
        return self.tiles(m, n)


@dataclass(frozen=True, slots=True)
class GemmPlan:
    """A tile shape, how many ways K is split between blocks, and (unsplit) how many shares of
    K each block runs one after another, adding each into y (quant_gemm.cu's slices)."""

    tile: GemmTile
    splits: int = 1
    slices: int = 1

    def grid(self, m: int, n: int) -> Dim3:
        return self.tile.grid(m, n, self.splits)

    def blocks(self, m: int, n: int) -> int:
        return self.tile.tiles(m, n) * self.splits

    def workspace_bytes(self, m: int, n: int) -> int:
        """Bytes of workspace the launch needs (0 unsplit): the counters, then each split's
        float32 sums of each tile."""
        if self.splits == 1:
            return 0
        tile_bytes = 4 * self.tile.rows * self.tile.cols
        return _PARTIALS_OFFSET + self.splits * self.tile.tiles(m, n) * tile_bytes


# Tiles to try for up to so many rows of x, best first; choose_plan takes the first that fills
# the GPU. Small batches read W once per 16 or 32 rows; larger ones want tall warp tiles (64
# rows per dequantised fragment). Measured on an H100 (scripts/bench_gemm.py, 2026-11-23, the
# Llama-8B projections): T64 is the fastest or within 5 % of it from 33 to 512 rows, where
# T128/W128 were up to 40 % slower (gate_up at 512 rows: T64 540 µs, W128 623 µs).
_PREFERENCE: Final[tuple[tuple[int, tuple[GemmTile, ...]], ...]] = (
    (16, (GemmTile.S16,)),
    (32, (GemmTile.S32, GemmTile.S16)),
    (64, (GemmTile.T64, GemmTile.W64, GemmTile.S32, GemmTile.S16)),
    (128, (GemmTile.T64, GemmTile.W64, GemmTile.T128, GemmTile.S32)),
    (_INDEX_LIMIT, (GemmTile.T64, GemmTile.W64, GemmTile.W128, GemmTile.T128)),
)
# Above 256 rows, a product this wide and deep (Llama-8B's gate/up, 28672 x 4096) has blocks
# enough either way, and W64's 256-column tiles read each x tile from L2 half as often: on an
# H200 (scripts/bench_gemm.py, 2026-12-02) gate_up took 523 µs at 512 rows against T64's 541,
# but 304 against 278 at 256 rows.
_WIDE_ROWS: Final = 256
_WIDE_N: Final = 16384
_WIDE_K: Final = 4096
_WIDE_PREFERENCE: Final = (GemmTile.W64, GemmTile.T64, GemmTile.W128, GemmTile.T128)
# Batch-invariant mode's tiles by rows of x, smallest first, for every block type: quant_gemm.cu
# asserts that they share their K-warps and W steps (a K-quant's: a super-block, which T64
# computes in x steps of 2 units, each K-warp the same units in the same order), so given the
# same K shares a row's sums are the same bits in each of them.
INVARIANT_TILES: Final = ((16, GemmTile.S16), (32, GemmTile.S32), (_INDEX_LIMIT, GemmTile.T64))
# The block types with _sliced kernels (quant_gemm.cu's EMBER_GEMM_SLICED_ALL): all of them.
INVARIANT_TYPES: Final = tuple(QuantType)


# Blocks per SM each tile's registers were fitted for (quant_gemm.cu's MIN_BLOCKS); the loaded
# family replaces these with what the device's shared memory allows.
DEFAULT_RESIDENCY: Final[Mapping[GemmTile, int]] = {
    tile: 1 if tile is GemmTile.W128 else 2 for tile in GemmTile
}


def fills(blocks: int, multiprocessors: int) -> bool:
    """Whether a grid of `blocks` keeps (nearly) every SM busy."""
    return 4 * blocks >= 3 * multiprocessors


def split_count(tile: GemmTile, m: int, n: int, k: int, multiprocessors: int, per_sm: int) -> int:
    """Splits of K that bring `tile`'s grid to about one wave of resident blocks, or 1 where
    the tiles alone fill the GPU. Each split keeps at least _MIN_SPLIT_STEPS steps, and a tile's
    splits at most _FIXUP_BYTES of sums."""
    tiles = tile.tiles(m, n)
    if fills(tiles, multiprocessors) or tiles > _COUNTERS:
        return 1
    by_fill = multiprocessors * per_sm // tiles
    by_steps = tile.steps(k) // _MIN_SPLIT_STEPS
    by_fixup = _FIXUP_BYTES // (4 * tile.rows * tile.cols)
    return max(1, min(by_fill, by_steps, by_fixup, MAX_SPLITS))


def invariant_shares(n: int, k: int, multiprocessors: int, per_sm: int) -> int:
    """The K shares of an [m, K] x [K, n] product in batch-invariant mode: the split count that
    a 16-row product's S16 plan takes, so that decode at small batches keeps the GPU busy; a
    function of the weight's shape and the GPU alone, never of m."""
    return split_count(GemmTile.S16, 16, n, k, multiprocessors, per_sm)


def choose_invariant_plan(
    m: int,
    n: int,
    k: int,
    multiprocessors: int,
    residency: Mapping[GemmTile, int] = DEFAULT_RESIDENCY,
    workspace_bytes: int = 0,
    shares: int | None = None,
) -> GemmPlan:
    """Batch-invariant mode's plan: the tile of INVARIANT_TILES for m rows, and the product's
    fixed K shares, run as splits where the tiles alone leave SMs idle and the workspace holds
    the splits' sums, else as slices of each block (the same result either way). `shares`
    overrides the K shares (for tuning them)."""
    tile = next(t for rows, t in INVARIANT_TILES if m <= rows)
    missing = [t.name for _, t in INVARIANT_TILES if t not in residency]
    if missing:
        raise EmberError(
            f"batch-invariant GEMMs need the {', '.join(missing)} tiles, which do not fit this "
            "GPU's shared memory; run without --batch-invariant"
        )
    if shares is None:
        shares = invariant_shares(n, k, multiprocessors, residency[GemmTile.S16])
    split = GemmPlan(tile, shares, shares)
    count = tile.tiles(m, n)
    if (
        shares > 1
        and not fills(count, multiprocessors)
        and count <= _COUNTERS
        and split.workspace_bytes(m, n) <= workspace_bytes
    ):
        return split
    return GemmPlan(tile, 1, shares)


def choose_plan(
    m: int,
    n: int,
    k: int,
    multiprocessors: int,
    residency: Mapping[GemmTile, int] = DEFAULT_RESIDENCY,
    split: bool = True,
) -> GemmPlan:
    """The plan for an [m, K] x [K, n] product: the first preferred tile for m rows whose grid
    (with K split where `split` allows) fills the GPU, else the one with the most blocks.
    `residency` holds the tiles that can run and how many blocks of each fit an SM."""
    candidates = next(tiles for rows, tiles in _PREFERENCE if m <= rows)
    if m > _WIDE_ROWS and n >= _WIDE_N and k >= _WIDE_K:
        candidates = _WIDE_PREFERENCE
    available = [t for t in candidates if t in residency] or [t for t in GemmTile if t in residency]
    if not available:
        raise EmberError("no quant_gemm tile fits this GPU's shared memory")
    plans = [
        GemmPlan(t, split_count(t, m, n, k, multiprocessors, residency[t]) if split else 1)
        for t in available
    ]
    filling = [p for p in plans if fills(p.blocks(m, n), multiprocessors)]
    return filling[0] if filling else max(plans, key=lambda p: p.blocks(m, n))


def choose_tile(m: int, n: int, multiprocessors: int, k: int = 4096) -> GemmTile:
    """The tile of the unsplit plan (see choose_plan)."""
    return choose_plan(m, n, k, multiprocessors, split=False).tile


@dataclass(frozen=True, slots=True)
class TileLayout:
    """One kernel's layout, as quant_gemm.cu (or quant_mmq.cu) exports it (`layouts`), on this
    device."""

    shared_bytes: int  # dynamic shared memory per block
    per_sm: int  # blocks an SM holds (registers and shared memory), 0: cannot run here


class QuantGemm:
    """The quant_gemm kernel family, loaded in the current context."""

    __slots__ = (
        "_kernels",
        "_sliced",
        "layouts",
        "module",
        "multiprocessors",
        "residency",
        "type_residency",
    )

    def __init__(self, module: Module, device: Device) -> None:
        self.module = module
        self.multiprocessors = device.multiprocessor_count
        self.layouts = tile_layouts(device.max_shared_memory_per_block_optin)
        self._kernels: dict[tuple[QuantType, GemmTile], Kernel] = {}
        for (q, tile), layout in self.layouts.items():
            name = f"quant_gemm_{q.name.lower()}_{tile.name.lower()}"
            kernel = _INTERFACE.kernel(module, name)
            if layout.per_sm:  # needed above 48 KB, harmless below
                kernel.set_max_dynamic_shared_memory(layout.shared_bytes)
            self._kernels[q, tile] = kernel
        # The tiles each type runs here, and how many blocks of each an SM holds.
        self.type_residency = {q: type_residency(self.layouts, q) for q in QuantType}
        # Slices of K in one block: the invariant tiles' _sliced kernels, with their layouts.
        self._sliced: dict[tuple[QuantType, GemmTile], Kernel] = {}
        for q in INVARIANT_TYPES:
            for _, tile in INVARIANT_TILES:
                kernel = _INTERFACE.kernel(
                    module, f"quant_gemm_{q.name.lower()}_{tile.name.lower()}_sliced"
                )
                layout = self.layouts[q, tile]
                if layout.per_sm:
                    kernel.set_max_dynamic_shared_memory(layout.shared_bytes)
                self._sliced[q, tile] = kernel
        # The 32-weight types run every tile or none, at their least resident type's count.
        self.residency: dict[GemmTile, int] = {}
        for tile in GemmTile:
            per_sm = min(self.layouts[q, tile].per_sm for q in QuantType if not q.unit_format)
            if per_sm:
                self.residency[tile] = per_sm

    @classmethod
    def load(cls, device: Device) -> QuantGemm:
        return cls(load_family("quant_gemm", device), device)

    def plan(
        self, m: int, n: int, k: int, split: bool = True, quant: QuantType | None = None
    ) -> GemmPlan:
        """The plan for a product; for `quant`, among the tiles that type runs (default: the
        32-weight types' common tiles)."""
        residency = self.residency if quant is None else self.type_residency[quant]
        return choose_plan(m, n, k, self.multiprocessors, residency, split)

    def invariant_plan(
        self,
        quant: QuantType,
        m: int,
        n: int,
        k: int,
        workspace_bytes: int = 0,
        shares: int | None = None,
    ) -> GemmPlan:
        """`quant`'s invariant plan; the 32-weight types share their tiles' residency."""
        shared = quant.block_weights == BLOCK_WEIGHTS
        residency = self.residency if shared else self.type_residency[quant]
        return choose_invariant_plan(
            m, n, k, self.multiprocessors, residency, workspace_bytes, shares
        )

    def workspace_bytes(self, m: int, n: int, k: int) -> int:
        """Workspace bytes that gemm_launch's own plan for this product needs."""
        return self.plan(m, n, k).workspace_bytes(m, n)

    @property
    def max_workspace_bytes(self) -> int:
        """Enough workspace for gemm_launch's own plan of any product (17 MB on an H100): K is
        split only for fewer tiles than SMs, each with at most _FIXUP_BYTES of sums."""
        return _PARTIALS_OFFSET + _FIXUP_BYTES * self.multiprocessors

    def gemm_launch(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        tile: GemmTile | None = None,
        workspace: DeviceArray | None = None,
        splits: int | None = None,
        *,
        invariant: bool = False,
        slices: int | None = None,
        y_at: int | None = None,
    ) -> Launch:
        """The launch of y[m, n] = sum_k x[m, k] * W[n, k], checked once.

        `weight` is the tensor's raw bytes as uint8 [N, K / 32 * block bytes]; x is float32
        [M, K], y float32 [M, N], M and N at least 1. weight, x and workspace must be 16-byte
        aligned. Without a workspace K is never split. `tile` and `splits` override the plan
        (for tests and tuning); splits beyond a tile's K steps leave some splits empty.
        `invariant`: batch-invariant mode's plan (`invariant_plan`); `tile`, `splits` and
        `slices` then override its parts, for tests that run one row every way.
        `y_at`: y is wider, and this product's N columns start at column y_at (a part of a
        matrix stacked from tensors of different block types).
        """
        m, k, n = check_operands("gemm", weight, x, y)
        check_fit("gemm", weight, quant, x, y, y_at=y_at)
        if m == 0 or n == 0:
            raise ValueError(f"gemm needs at least one row of x and of W, got M {m}, N {n}")
        if weight.nbytes >= _INDEX_LIMIT or m * k >= _INDEX_LIMIT:
            raise ValueError(f"gemm takes W and x of under 2^31 bytes and elements, got {m}x{k}")
        if invariant:
            plan = self.invariant_plan(quant, m, n, k, 0 if workspace is None else workspace.nbytes)
            plan = GemmPlan(
                plan.tile if tile is None else tile,
                plan.splits if splits is None else splits,
                plan.slices if slices is None else slices,
            )
        else:
            plan = self._plan(m, n, k, tile, workspace is not None, splits, quant)
            if slices is not None:
                plan = GemmPlan(plan.tile, plan.splits, slices)
        split_slices = plan.slices == 1 or plan.splits in (1, plan.slices)
        if not 1 <= plan.slices <= MAX_SPLITS or not split_slices:
            raise ValueError(
                f"gemm runs 1 to {MAX_SPLITS} slices of K (a split launch's are its splits), "
                f"got {plan.slices} slices with {plan.splits} splits"
            )
        layout = self.layouts[quant, plan.tile]
        if layout.per_sm == 0:
            raise ValueError(
                f"{quant.name} gemm does not run tile {plan.tile.name} on this GPU (it needs "
                f"{layout.shared_bytes} bytes of shared memory per block); it runs "
                f"{', '.join(t.name for t in self.type_residency[quant]) or 'none'}"
            )
        grid = plan.grid(m, n)
        if grid[1] > _MAX_GRID_YZ:
            raise ValueError(
                f"gemm takes at most {_MAX_GRID_YZ * plan.tile.cols} rows of W, got {n}"
            )
        partials = counters = 0
        if plan.splits > 1:
            partials, counters = _split_workspace(plan, m, n, workspace)
        kernel = self._kernels[quant, plan.tile]
        if plan.splits == 1 and plan.slices > 1:
            sliced = self._sliced.get((quant, plan.tile))
            if sliced is None:
                tiles = ", ".join(t.name for _, t in INVARIANT_TILES)
                raise ValueError(
                    f"gemm runs slices of {quant.name} K on the {tiles} tiles, not on "
                    f"{plan.tile.name}"
                )
            kernel = sliced
        y_ptr = y.ptr + 4 * (0 if y_at is None else y_at)
        return Launch(
            kernel,
            grid,
            (_THREADS, 1, 1),
            (weight.ptr, x.ptr, y_ptr, m, n, k, plan.slices, partials, counters, y.shape[1]),
            layout.shared_bytes,
        )

    def gemm(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        stream: Stream | None = None,
        workspace: DeviceArray | None = None,
    ) -> None:
        """y = x @ W.T now, on `stream` (see gemm_launch)."""
        self.gemm_launch(weight, quant, x, y, workspace=workspace)(stream)

    def unload(self) -> None:
        self.module.unload()

    def _plan(
        self,
        m: int,
        n: int,
        k: int,
        tile: GemmTile | None,
        split: bool,
        splits: int | None,
        quant: QuantType,
    ) -> GemmPlan:
        if splits is not None and not 1 <= splits <= MAX_SPLITS:
            raise ValueError(f"gemm splits K 1 to {MAX_SPLITS} ways, not {splits}")
        if tile is None:
            plan = self.plan(m, n, k, split, quant)
            return plan if splits is None else GemmPlan(plan.tile, splits)
        if splits is None:
            per_sm = self.type_residency[quant].get(tile, 1)
            splits = split_count(tile, m, n, k, self.multiprocessors, per_sm) if split else 1
        return GemmPlan(tile, splits)


def _split_workspace(
    plan: GemmPlan, m: int, n: int, workspace: DeviceArray | None
) -> tuple[int, int]:
    """(partials, counters) addresses in `workspace` for a split launch, checked."""
    need = plan.workspace_bytes(m, n)
    if workspace is not None and workspace.ptr % 16:
        raise ValueError("gemm needs its workspace 16-byte aligned")
    if workspace is None or workspace.nbytes < need:
        have = 0 if workspace is None else workspace.nbytes
        raise ValueError(f"split-K gemm needs a workspace of {need} bytes, got {have}")
    if plan.tile.tiles(m, n) > _COUNTERS:
        raise ValueError(
            f"split-K gemm takes at most {_COUNTERS} tiles, got {plan.tile.tiles(m, n)}"
        )
    return workspace.ptr + _PARTIALS_OFFSET, workspace.ptr


def type_residency(
    layouts: Mapping[tuple[QuantType, GemmTile], TileLayout], quant: QuantType
) -> dict[GemmTile, int]:
    """The tiles `quant` runs with these layouts, and how many blocks of each an SM holds."""
    return {t: layouts[quant, t].per_sm for t in GemmTile if layouts[quant, t].per_sm}


def tile_layouts(max_shared: int) -> dict[tuple[QuantType, GemmTile], TileLayout]:
    """Every kernel's layout on a device with `max_shared` bytes of shared memory per block
    (opt-in), from quant_gemm.cu's exported table (7 ints a kernel: block bytes, tile ID, rows,
    columns, blocks per K step, dynamic shared memory, blocks per SM its registers were fitted
    for), each row checked against its QuantType and GemmTile."""
    keys = [(q, tile) for q in QuantType for tile in GemmTile]
    rows = _INTERFACE.rows("layouts", 7)
    if len(rows) != len(keys):
        raise EmberError(f"quant_gemm.cu exports {len(rows)} layouts for {len(keys)} kernels")
    per_sm_bytes = max_shared + _SHARED_RESERVED
    layouts = {}
    for (q, tile), row in zip(keys, rows, strict=True):
        block_bytes, tile_id, tile_rows, cols, step_blocks, shared, min_blocks = row
        if (block_bytes, tile_id, tile_rows, cols, step_blocks) != (
            q.block_bytes,
            tile.id,
            tile.rows,
            tile.cols,
            tile.step_blocks,
        ):
            raise EmberError(
                f"quant_gemm kernels do not match GemmTile.{tile.name} for {q.name}: {row}"
            )
        fit = per_sm_bytes // (shared + _SHARED_RESERVED)
        layouts[q, tile] = TileLayout(shared, min(min_blocks, fit))
    return layouts
