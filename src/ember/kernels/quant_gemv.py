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
# One kernel per batch tier; a batch runs on the smallest tier that holds it (a tier-T kernel
# computes at least T / 2 + 1 rows whatever the batch, and stores only the batch's).
BATCH_TIERS: Final = (1, 2, 4, 8)
MAX_BATCH: Final = BATCH_TIERS[-1]
BLOCK_WEIGHTS: Final = 32
# quant_gemv.cu's layout: a thread block of up to 8 warps owns 32 weight rows; each warp keeps
# STAGES stages of 32 rows x 8 GGUF blocks in shared memory, and the x of one stage.
_ROWS_PER_BLOCK: Final = 32
_MAX_WARPS: Final = 8
_STAGES: Final = 2
_STAGE_BLOCKS: Final = 8
_X_RECORD_BYTES: Final = 16


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


def stage_granules(quant: QuantType, k: int) -> int:
    """16-byte granules a row's stage of 8 blocks takes in shared memory: the stage's bytes when
    rows are 16-byte aligned, else room for a start up to 14 bytes into the first granule."""
    piece = _STAGE_BLOCKS * quant.block_bytes
    return piece // 16 if quant.row_bytes(k) % 16 == 0 else (piece + 14 + 15) // 16


def warp_shared_bytes(quant: QuantType, k: int, tier: int) -> int:
    """Shared memory one warp of quant_gemv uses: its stages and one stage of quantised x."""
    ring = _STAGES * _ROWS_PER_BLOCK * 16 * stage_granules(quant, k)
    return ring + tier * _STAGE_BLOCKS * (BLOCK_WEIGHTS + _X_RECORD_BYTES)


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

    __slots__ = ("_kernels", "max_shared", "module")

    def __init__(self, module: Module, max_shared: int) -> None:
        """`max_shared`: the device's shared memory per thread block (opt-in), which sets how
        many warps a block gets where 8 would not fit (Q8_0 on 99 KB GPUs, say)."""
        self.module = module
        self.max_shared = max_shared
        signature = (Arg.PTR, Arg.PTR, Arg.PTR, Arg.I32, Arg.I32, Arg.I32)
        self._kernels: dict[tuple[QuantType, int], Kernel] = {
            (q, tier): module.function(f"quant_gemv_{q.name.lower()}_b{tier}", signature)
            for q in QuantType
            for tier in BATCH_TIERS
        }
        for kernel in self._kernels.values():
            kernel.set_max_dynamic_shared_memory(max_shared)

    @classmethod
    def load(cls, device: Device) -> QuantGemv:
        return cls(load_family("quant_gemv", device), device.max_shared_memory_per_block_optin)

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
        [batch, K], y float32 [batch, N]. weight and x must be 16-byte aligned. x is quantised
        to int8 per 32 values on the way (relative error up to 1/254 of each block's largest
        |x|), as llama.cpp's integer GEMV does.
        """
        batch, k, n = check_operands("gemv", weight, x, y)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"gemv takes a batch of 1 to {MAX_BATCH}, got {batch}")
        check_fit("gemv", weight, quant, x, y)
        tier = next(t for t in BATCH_TIERS if t >= batch)
        per_warp = warp_shared_bytes(quant, k, tier)
        warps = _MAX_WARPS
        while warps > 1 and warps * per_warp > self.max_shared:
            warps //= 2
        if warps * per_warp > self.max_shared:
            raise ValueError(
                f"{quant.name} gemv needs {per_warp} bytes of shared memory per warp; "
                f"the device has {self.max_shared} per block"
            )
        blocks = max(1, (n + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK)
        return Launch(
            self._kernels[quant, tier],
            (blocks, 1, 1),
            (32 * warps, 1, 1),
            (weight.ptr, x.ptr, y.ptr, n, k, batch),
            shared_mem=warps * per_warp,
        )

    def unload(self) -> None:
        self.module.unload()
