"""Launch wrapper for quant_gemm.cu: y = x @ W.T on tensor cores, W a Q4_0, Q4_1 or Q8_0 GGUF
tensor, for prefill and decode batches too large for quant_gemv."""

from __future__ import annotations

from enum import Enum
from typing import Final

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Arg, Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.quant_gemv import QuantType, check_fit, check_operands

_THREADS: Final = 256  # every tile shape in quant_gemm.cu runs 8 warps
_MAX_GRID_Y: Final = 65535


class GemmTile(Enum):
    """A tile shape of quant_gemm.cu, (rows of x, rows of W) per block; the name is the kernel
    suffix."""

    M16 = (16, 32)
    M32 = (32, 32)
    M64 = (64, 64)
    M128 = (128, 128)

    @property
    def rows(self) -> int:
        return self.value[0]

    @property
    def cols(self) -> int:
        return self.value[1]

    def grid(self, m: int, n: int) -> tuple[int, int, int]:
        return (-(-m // self.rows), -(-n // self.cols), 1)

    def blocks(self, m: int, n: int) -> int:
        grid = self.grid(m, n)
        return grid[0] * grid[1]


def choose_tile(m: int, n: int, multiprocessors: int) -> GemmTile:
    """The tile for an [m, K] x [K, n] product on a GPU with `multiprocessors` SMs.

    Up to 32 rows of x the product is bound by reading W, which each M tile reads once, so the
    M tile is the smallest that holds x. Above that it is compute-bound: 128 x 128 tiles do the
    most work per dequantised weight, but 64 x 64 ones are used while the larger would leave
    SMs idle (M 512 with N 4096, or the small model's narrower matrices).
    """
    if m <= GemmTile.M16.rows:
        return GemmTile.M16
    if m <= GemmTile.M32.rows:
        return GemmTile.M32
    if m <= GemmTile.M64.rows or GemmTile.M128.blocks(m, n) < multiprocessors:
        return GemmTile.M64
    return GemmTile.M128


class QuantGemm:
    """The quant_gemm kernel family, loaded in the current context."""

    __slots__ = ("_kernels", "module", "multiprocessors")

    def __init__(self, module: Module, multiprocessors: int) -> None:
        self.module = module
        self.multiprocessors = multiprocessors
        signature = (Arg.PTR, Arg.PTR, Arg.PTR, Arg.I32, Arg.I32, Arg.I32)
        self._kernels: dict[tuple[QuantType, GemmTile], Kernel] = {
            (q, tile): module.function(
                f"quant_gemm_{q.name.lower()}_{tile.name.lower()}", signature
            )
            for q in QuantType
            for tile in GemmTile
        }

    @classmethod
    def load(cls, device: Device) -> QuantGemm:
        return cls(load_family("quant_gemm", device), device.multiprocessor_count)

    def gemm_launch(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        tile: GemmTile | None = None,
    ) -> Launch:
        """The launch of y[m, n] = sum_k x[m, k] * W[n, k], checked once.

        `weight` is the tensor's raw bytes as uint8 [N, K / 32 * block bytes]; x is float32
        [M, K], y float32 [M, N], M and N at least 1. weight and x must be 16-byte aligned.
        `tile` overrides choose_tile (for tests and tuning).
        """
        m, k, n = check_operands("gemm", weight, x, y)
        check_fit("gemm", weight, quant, x, y)
        if m == 0 or n == 0:
            raise ValueError(f"gemm needs at least one row of x and of W, got M {m}, N {n}")
        tile = tile or choose_tile(m, n, self.multiprocessors)
        grid = tile.grid(m, n)
        if grid[1] > _MAX_GRID_Y:
            raise ValueError(f"gemm takes at most {_MAX_GRID_Y * tile.cols} rows of W, got {n}")
        return Launch(
            self._kernels[quant, tile], grid, (_THREADS, 1, 1), (weight.ptr, x.ptr, y.ptr, m, n, k)
        )

    def gemm(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        stream: Stream | None = None,
    ) -> None:
        """y = x @ W.T now, on `stream` (see gemm_launch)."""
        self.gemm_launch(weight, quant, x, y)(stream)

    def unload(self) -> None:
        self.module.unload()
