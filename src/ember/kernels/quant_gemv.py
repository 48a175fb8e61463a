"""Launch wrapper for quant_gemv.cu: y = x @ W.T with W a Q4_0, Q4_1 or Q8_0 GGUF tensor."""

from __future__ import annotations

from enum import Enum
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Arg, Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family

_F32: Final = np.dtype(np.float32)
_U8: Final = np.dtype(np.uint8)
# quant_gemv.cu's WARPS and ROWS: a block of 4 warps covers 8 rows.
_THREADS: Final = 128
_ROWS_PER_BLOCK: Final = 8
# One kernel per batch tier; a batch runs on the smallest tier that holds it.
BATCH_TIERS: Final = (1, 2, 4, 8)
MAX_BATCH: Final = BATCH_TIERS[-1]
BLOCK_WEIGHTS: Final = 32


class QuantType(Enum):
    """A block type GGUF stores weights in, named as GGMLQuantizationType names it."""

    Q4_0 = 18
    Q4_1 = 20
    Q8_0 = 34

    @property
    def block_bytes(self) -> int:
        return self.value

    def row_bytes(self, k: int) -> int:
        return k // BLOCK_WEIGHTS * self.value


def check_operands(
    op: str, weight: DeviceArray, x: DeviceArray, y: DeviceArray
) -> tuple[int, int, int]:
    """(M, K, N) of y = x @ W.T after checking dtypes and ranks: uint8 weight bytes [N, row
    bytes], float32 x [M, K] and y [M, N]. Shared by the GEMV and GEMM wrappers."""
    if weight.dtype != _U8 or x.dtype != _F32 or y.dtype != _F32:
        raise TypeError(
            f"{op} needs uint8 weight bytes, float32 x and y, got {weight.dtype}, "
            f"{x.dtype}, {y.dtype}"
        )
    if len(x.shape) != 2 or len(y.shape) != 2 or len(weight.shape) != 2:
        raise ValueError(
            f"{op} needs weight [N, bytes], x [M, K], y [M, N], got "
            f"{weight.shape}, {x.shape}, {y.shape}"
        )
    return x.shape[0], x.shape[1], weight.shape[0]


def check_fit(
    op: str, weight: DeviceArray, quant: QuantType, x: DeviceArray, y: DeviceArray
) -> None:
    """K a positive multiple of 32 matching W's row bytes, y [M, N], W and x 16-byte aligned."""
    m, k = x.shape
    n = weight.shape[0]
    if k == 0 or k % BLOCK_WEIGHTS or weight.shape[1] != quant.row_bytes(k) or y.shape != (m, n):
        raise ValueError(
            f"{quant.name} {op}: x {x.shape} and y {y.shape} do not fit weight bytes "
            f"{weight.shape} (K a positive multiple of {BLOCK_WEIGHTS}, "
            f"{quant.block_bytes} bytes per block of a row)"
        )
    if (weight.ptr | x.ptr) % 16:
        raise ValueError(f"{op} needs weight and x 16-byte aligned (read as vectors)")


class QuantGemv:
    """The quant_gemv kernel family, loaded in the current context."""

    __slots__ = ("_kernels", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        signature = (Arg.PTR, Arg.PTR, Arg.PTR, Arg.I32, Arg.I32, Arg.I32)
        self._kernels: dict[tuple[QuantType, int], Kernel] = {
            (q, tier): module.function(f"quant_gemv_{q.name.lower()}_b{tier}", signature)
            for q in QuantType
            for tier in BATCH_TIERS
        }

    @classmethod
    def load(cls, device: Device) -> QuantGemv:
        return cls(load_family("quant_gemv", device))

    def gemv(
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        stream: Stream | None = None,
    ) -> None:
        launch = self.gemv_launch(weight, quant, x, y)
        if weight.shape[0]:
            launch(stream)

    def gemv_launch(
        self, weight: DeviceArray, quant: QuantType, x: DeviceArray, y: DeviceArray
    ) -> Launch:
        """y[b, n] = sum_k x[b, k] * W[n, k] for a batch of 1 to 8 rows of x.

        `weight` is the tensor's raw bytes as uint8 [N, K / 32 * block bytes]; x is float32
        [batch, K], y float32 [batch, N]. weight and x must be 16-byte aligned.
        """
        batch, k, n = check_operands("gemv", weight, x, y)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"gemv takes a batch of 1 to {MAX_BATCH}, got {batch}")
        check_fit("gemv", weight, quant, x, y)
        tier = next(t for t in BATCH_TIERS if t >= batch)
        blocks = max(1, (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK)
        return Launch(
            self._kernels[quant, tier],
            (blocks, 1, 1),
            (_THREADS, 1, 1),
            (weight.ptr, x.ptr, y.ptr, n, k, batch),
        )

    def unload(self) -> None:
        self.module.unload()
