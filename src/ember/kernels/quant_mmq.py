"""Launch wrapper for quant_mmq.cu: y = x @ W.T on int8 tensor cores for the K-quants (Q4_K,
Q5_K, Q6_K), for prefill and large batches, as llama.cpp's MMQ: x is first quantised to int8 per
32 values into a workspace (`quantize_launch`), which one or more GEMMs then read
(`gemm_launch`; several for a matrix stacked from parts of different block types, each writing
its columns of one y). `launches` gives both for one product.

The workspace holds x's int8 values [M_pad, K] and a float2 (scale, sum) per 32 values and row,
M_pad being M rounded up to the tallest tile (quant_mmq.cu); `workspace_bytes(m, k)` sizes it.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from ember.errors import EmberError
from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Dim3, Kernel, Launch
from ember.gpu.module import Module
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface
from ember.kernels.quant_gemm import TileLayout, fills
from ember.kernels.quant_gemv import SUPER_BLOCK_WEIGHTS, QuantType, check_fit, check_operands

_INTERFACE: Final = family_interface("quant_mmq")
_THREADS: Final = _INTERFACE.constant("threads")
# The workspace's rows of x are a multiple of this (the tallest tile's rows).
ROWS_MULTIPLE: Final = _INTERFACE.constant("rows_multiple")
_QUANTIZE_THREADS: Final = 256
_QUANTIZE_STEPS: Final = _QUANTIZE_THREADS // 32  # super-blocks of a row a quantising block takes
_MAX_GRID_YZ: Final = 65535
_SHARED_RESERVED: Final = 1024  # the driver's own shared memory per block
_INDEX_LIMIT: Final = 2**31  # the kernels index W's bytes and the workspace in 32 bits
# The block types quant_mmq.cu has kernels for, in its EMBER_MMQ_ALL order.
MMQ_TYPES: Final = (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K)


class MmqTile(Enum):
    """A tile shape of quant_mmq.cu: (its ID there, rows of x, rows of W) per block; the name is
    the kernel suffix."""

    T64 = (0, 64, 128)
    T128 = (1, 128, 128)

    @property
    def id(self) -> int:
        return self.value[0]

    @property
    def rows(self) -> int:
        return self.value[1]

    @property
    def cols(self) -> int:
        return self.value[2]

    def grid(self, m: int, n: int) -> Dim3:
        return (-(-m // self.rows), -(-n // self.cols), 1)

    def blocks(self, m: int, n: int) -> int:
        grid = self.grid(m, n)
        return grid[0] * grid[1]


def padded_rows(m: int) -> int:
    """The workspace's rows of x for m rows: m rounded up to ROWS_MULTIPLE."""
    return -(-m // ROWS_MULTIPLE) * ROWS_MULTIPLE


def workspace_bytes(m: int, k: int) -> int:
    """Bytes of workspace x [m, k] quantises into: int8 values, then a float2 per 32 values."""
    rows = padded_rows(m)
    return rows * k + rows * (k // 32) * 8


def choose_tile(m: int, n: int, multiprocessors: int, residency: dict[MmqTile, int]) -> MmqTile:
    """The 128-row tile where its blocks fill the GPU (a W fragment then feeds twice the mmas),
    else the 64-row one; among the tiles that run here."""
    if not residency:
        raise EmberError("no quant_mmq tile fits this GPU's shared memory")
    if MmqTile.T128 in residency and (
        MmqTile.T64 not in residency or fills(MmqTile.T128.blocks(m, n), multiprocessors)
    ):
        return MmqTile.T128
    return MmqTile.T64 if MmqTile.T64 in residency else MmqTile.T128


def mmq_layouts(max_shared: int) -> dict[tuple[QuantType, MmqTile], TileLayout]:
    """Every GEMM kernel's layout on a device with `max_shared` bytes of shared memory per block
    (opt-in), from quant_mmq.cu's exported table (6 ints a kernel: block bytes, tile ID, rows,
    columns, dynamic shared memory, blocks per SM its registers were fitted for), each row
    checked against its QuantType and MmqTile."""
    keys = [(q, tile) for q in MMQ_TYPES for tile in MmqTile]
    rows = _INTERFACE.rows("layouts", 6)
    if len(rows) != len(keys):
        raise EmberError(f"quant_mmq.cu exports {len(rows)} layouts for {len(keys)} kernels")
    per_sm_bytes = max_shared + _SHARED_RESERVED
    layouts = {}
    for (q, tile), row in zip(keys, rows, strict=True):
        block_bytes, tile_id, tile_rows, cols, shared, min_blocks = row
        if (block_bytes, tile_id, tile_rows, cols) != (
            q.block_bytes,
            tile.id,
            tile.rows,
            tile.cols,
        ):
            raise EmberError(
                f"quant_mmq kernels do not match MmqTile.{tile.name} for {q.name}: {row}"
            )
        fit = per_sm_bytes // (shared + _SHARED_RESERVED) if shared <= max_shared else 0
        layouts[q, tile] = TileLayout(shared, min(min_blocks, fit))
    return layouts


class QuantMmq:
    """The quant_mmq kernel family, loaded in the current context."""

    __slots__ = ("_kernels", "_quantize", "layouts", "module", "multiprocessors", "residency")

    def __init__(self, module: Module, device: Device) -> None:
        self.module = module
        self.multiprocessors = device.multiprocessor_count
        self.layouts = mmq_layouts(device.max_shared_memory_per_block_optin)
        self._quantize = _INTERFACE.kernel(module, "quantize_x_q8")
        self._kernels: dict[tuple[QuantType, MmqTile], Kernel] = {}
        for (q, tile), layout in self.layouts.items():
            kernel = _INTERFACE.kernel(module, f"quant_mmq_{q.name.lower()}_{tile.name.lower()}")
            if layout.per_sm:  # needed above 48 KB
                kernel.set_max_dynamic_shared_memory(layout.shared_bytes)
            self._kernels[q, tile] = kernel
        # The tiles each type runs here, and how many blocks of each an SM holds.
        self.residency = {
            q: {t: self.layouts[q, t].per_sm for t in MmqTile if self.layouts[q, t].per_sm}
            for q in MMQ_TYPES
        }

    @classmethod
    def load(cls, device: Device) -> QuantMmq:
        return cls(load_family("quant_mmq", device), device)

    def runs(self, quant: QuantType) -> bool:
        """Whether this GPU runs `quant`'s MMQ kernels (a K-quant whose tiles fit it)."""
        return bool(self.residency.get(quant))

    def tile(self, quant: QuantType, m: int, n: int) -> MmqTile:
        return choose_tile(m, n, self.multiprocessors, self.residency.get(quant, {}))

    def quantize_launch(self, x: DeviceArray, workspace: DeviceArray) -> Launch:
        """The launch that quantises float32 x [M, K] (K a multiple of 256, 16-byte aligned)
        into `workspace` (uint8, at least workspace_bytes(M, K), 16-byte aligned)."""
        m, k = _check_x(x)
        _check_workspace(workspace, m, k)
        grid = (-(-(k // SUPER_BLOCK_WEIGHTS) // _QUANTIZE_STEPS), padded_rows(m), 1)
        rows = padded_rows(m)
        return Launch(
            self._quantize,
            grid,
            (_QUANTIZE_THREADS, 1, 1),
            (x.ptr, workspace.ptr, workspace.ptr + rows * k, m, k, rows),
        )

    def gemm_launch(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        workspace: DeviceArray,
        *,
        y_at: int | None = None,
        tile: MmqTile | None = None,
    ) -> Launch:
        """The launch of y[m, n] = sum_k x[m, k] * W[n, k] from x as `quantize_launch` left it
        in `workspace` (x itself is read only for its shape). `weight` is the tensor's raw
        bytes, uint8 [N, K / 256 * block bytes], 16-byte aligned. `y_at`: y is wider, and this
        product's N columns start at column y_at. `tile` overrides the plan (tests, tuning)."""
        m, k, n = check_operands("mmq", weight, x, y)
        check_fit("mmq", weight, quant, x, y, y_at=y_at)
        _check_x(x)
        _check_workspace(workspace, m, k)
        if quant not in MMQ_TYPES:
            names = ", ".join(q.name for q in MMQ_TYPES)
            raise ValueError(f"mmq runs {names} weights, not {quant.name}: use quant_gemm")
        if n == 0:
            raise ValueError(f"mmq needs at least one row of W, got N {n}")
        if weight.nbytes >= _INDEX_LIMIT:
            raise ValueError(f"mmq takes W of under 2^31 bytes, got {weight.nbytes}")
        chosen = self.tile(quant, m, n) if tile is None else tile
        layout = self.layouts[quant, chosen]
        if layout.per_sm == 0:
            runs = ", ".join(t.name for t in self.residency[quant]) or "none"
            raise ValueError(
                f"{quant.name} mmq does not run tile {chosen.name} on this GPU (it needs "
                f"{layout.shared_bytes} bytes of shared memory per block); it runs {runs}"
            )
        grid = chosen.grid(m, n)
        if grid[1] > _MAX_GRID_YZ:
            raise ValueError(f"mmq takes at most {_MAX_GRID_YZ * chosen.cols} rows of W, got {n}")
        rows = padded_rows(m)
        y_ptr = y.ptr + 4 * (0 if y_at is None else y_at)
        return Launch(
            self._kernels[quant, chosen],
            grid,
            (_THREADS, 1, 1),
            (weight.ptr, workspace.ptr, workspace.ptr + rows * k, y_ptr, m, n, k, rows, y.shape[1]),
            layout.shared_bytes,
        )

    def launches(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        workspace: DeviceArray,
        y_at: int | None = None,
    ) -> tuple[Launch, Launch]:
        """x's quantisation into `workspace`, then the GEMM from it (see gemm_launch)."""
        gemm = self.gemm_launch(weight, quant, x, y, workspace, y_at=y_at)
        return self.quantize_launch(x, workspace), gemm

    def unload(self) -> None:
        self.module.unload()


def _check_x(x: DeviceArray) -> tuple[int, int]:
    if str(x.dtype) != "float32" or len(x.shape) != 2:
        raise TypeError(f"mmq quantises float32 x [M, K], got {x.dtype} {x.shape}")
    m, k = x.shape
    if m == 0 or k == 0 or k % SUPER_BLOCK_WEIGHTS:
        raise ValueError(
            f"mmq needs x [M, K] with M >= 1 and K a positive multiple of "
            f"{SUPER_BLOCK_WEIGHTS}, got {x.shape}"
        )
    if x.ptr % 16:
        raise ValueError("mmq needs x 16-byte aligned (read as float4)")
    if padded_rows(m) > _MAX_GRID_YZ:
        raise ValueError(
            f"mmq quantises at most {_MAX_GRID_YZ // ROWS_MULTIPLE * ROWS_MULTIPLE} rows"
        )
    return m, k


def _check_workspace(workspace: DeviceArray, m: int, k: int) -> None:
    need = workspace_bytes(m, k)
    if str(workspace.dtype) != "uint8" or workspace.nbytes < need:
        raise ValueError(
            f"mmq of x [{m}, {k}] needs a uint8 workspace of {need} bytes "
            f"(workspace_bytes(m, k)), got {workspace.dtype} of {workspace.nbytes}"
        )
    if workspace.ptr % 16:
        raise ValueError("mmq needs its workspace 16-byte aligned")
    if need >= _INDEX_LIMIT:
        raise ValueError(f"mmq's workspace of x [{m}, {k}] would pass 2^31 bytes ({need})")
