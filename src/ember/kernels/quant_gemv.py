"""Launch wrapper for quant_gemv.cu: y = x @ W.T with W a Q4_0, Q4_1 or Q8_0 GGUF tensor, with
the decode step's neighbouring work optionally fused in (RMSNorm before; residual add, SwiGLU,
or RoPE and the KV-cache store after)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Arg, Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.rope import RopeCache

_F32: Final = np.dtype(np.float32)
_U8: Final = np.dtype(np.uint8)
# One kernel per batch tier; a batch runs on the smallest tier that holds it (a tier-T kernel
# computes at least T / 2 + 1 rows whatever the batch, and stores only the batch's).
BATCH_TIERS: Final = (1, 2, 4, 8)
MAX_BATCH: Final = BATCH_TIERS[-1]
BLOCK_WEIGHTS: Final = 32
# quant_gemv.cu's layout: a thread block of up to 16 warps (8 above batch tier 2) owns 32
# weight rows; each warp keeps STAGES stages of 32 rows x 8 GGUF blocks in shared memory, and
# the x of one stage.
_ROWS_PER_BLOCK: Final = 32
_MAX_WARPS: Final = 16
_MAX_WARPS_ABOVE_TIER_2: Final = 8
# Warps of the kernel an SM holds at once: its registers (at most 128 a thread) allow 16.
_RESIDENT_WARPS: Final = 16
_SHARED_RESERVED: Final = 1024  # the driver's own shared memory per block
_STAGES: Final = 2
_STAGE_BLOCKS: Final = 8
_X_RECORD_BYTES: Final = 16
# The kernel's static shared memory (the rows' norm scales), on top of the dynamic.
_STATIC_SHARED: Final = 4 * MAX_BATCH
_SIGNATURE: Final = (
    (Arg.PTR, Arg.PTR, Arg.PTR, Arg.I32, Arg.I32, Arg.I32)  # w, x, y, n, k, batch
    + (Arg.I32, Arg.PTR, Arg.F32)  # output, norm weight, eps
    + (Arg.PTR, Arg.PTR)  # norm partials in, out
    + (Arg.PTR, Arg.PTR, Arg.PTR, Arg.PTR)  # positions, slots, k cache, v cache
    + (Arg.I32, Arg.I32, Arg.I32, Arg.I32, Arg.F32, Arg.F32)  # heads, dims, rope base, factor
)


class Output(IntEnum):
    """What the GEMV does with y = x @ W.T (quant_gemv.cu's Out)."""

    STORE = 0
    ADD = 1  # y += x @ W.T
    SWIGLU = 2  # W is gate rows then up rows [2F, K]; y [batch, F] = silu(gate) * up
    ROPE = 3  # y is q|k|v of one layer: q, k rotated; k, v stored in the paged cache


@dataclass(frozen=True, slots=True)
class RmsNorm:
    """Read x as rmsnorm(x) * weight (x being the residual stream).

    `partials`: the sums of squares of x's 32-column groups, float32 [batch, K / 32], as the
    ADD GEMV that produced x wrote them (`gemv_launch(..., sums_of_squares=)`); without them
    every thread block sums the squares of x itself (K floats a row, cheap only for small K
    and batches).
    """

    weight: DeviceArray  # float32 [K]
    eps: float
    partials: DeviceArray | None = None


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
    op: str,
    weight: DeviceArray,
    quant: QuantType,
    x: DeviceArray,
    y: DeviceArray,
    y_cols: int | None = None,
) -> None:
    """K a positive multiple of 32 matching W's row bytes, y [M, y_cols] (default N), W and x
    16-byte aligned."""
    m, k = x.shape
    n = weight.shape[0]
    cols = n if y_cols is None else y_cols
    if k == 0 or k % BLOCK_WEIGHTS or weight.shape[1] != quant.row_bytes(k) or y.shape != (m, cols):
        raise ValueError(
            f"{quant.name} {op}: x {x.shape} and y {y.shape} do not fit weight bytes "
            f"{weight.shape} (K a positive multiple of {BLOCK_WEIGHTS}, "
            f"{quant.block_bytes} bytes per block of a row)"
        )
    if (weight.ptr | x.ptr) % 16:
        raise ValueError(f"{op} needs weight and x 16-byte aligned (read as vectors)")


class QuantGemv:
    """The quant_gemv kernel family, loaded in the current context."""

    __slots__ = ("_kernels", "max_shared", "module", "multiprocessors")

    def __init__(self, module: Module, max_shared: int, multiprocessors: int) -> None:
        """`max_shared`: the device's shared memory per thread block (opt-in), which sets how
        many warps a block gets where 8 would not fit (Q8_0 on 99 KB GPUs, say);
        `multiprocessors`: its SMs, over which a launch's thread blocks are spread."""
        self.module = module
        self.max_shared = max_shared
        self.multiprocessors = multiprocessors
        self._kernels: dict[tuple[QuantType, int], Kernel] = {
            (q, tier): module.function(f"quant_gemv_{q.name.lower()}_b{tier}", _SIGNATURE)
            for q in QuantType
            for tier in BATCH_TIERS
        }
        for kernel in self._kernels.values():
            kernel.set_max_dynamic_shared_memory(max_shared - _STATIC_SHARED)

    @classmethod
    def load(cls, device: Device) -> QuantGemv:
        return cls(
            load_family("quant_gemv", device),
            device.max_shared_memory_per_block_optin,
            device.multiprocessor_count,
        )

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
        self,
        weight: DeviceArray,
        quant: QuantType,
        x: DeviceArray,
        y: DeviceArray,
        *,
        norm: RmsNorm | None = None,
        output: Output = Output.STORE,
        rope: RopeCache | None = None,
        sums_of_squares: DeviceArray | None = None,
    ) -> Launch:
        """y[b, n] = sum_k x[b, k] * W[n, k] for a batch of 1 to 8 rows of x.

        `weight` is the tensor's raw bytes as uint8 [N, K / 32 * block bytes]; x is float32
        [batch, K], y float32 [batch, N] ([batch, N / 2] for SWIGLU). weight and x must be
        16-byte aligned. x is quantised to int8 per 32 values on the way (relative error up to
        1/254 of each block's largest |x|), as llama.cpp's integer GEMV does. `norm` normalises
        x first; `output` says what happens to the sums (`rope` describes the cache for ROPE).
        `sums_of_squares` (STORE or ADD): also write the sums of squares of y's 32-column
        groups, float32 [batch, ceil(N / 32)], for the next GEMV's norm (`RmsNorm.partials`).
        """
        batch, k, n = check_operands("gemv", weight, x, y)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"gemv takes a batch of 1 to {MAX_BATCH}, got {batch}")
        if output is Output.SWIGLU:
            if n % 2:
                raise ValueError(f"swiglu gemv needs W [2F, K], got {n} rows")
            check_fit("swiglu gemv", weight, quant, x, y, n // 2)
        else:
            check_fit("gemv", weight, quant, x, y)
        tier = next(t for t in BATCH_TIERS if t >= batch)
        per_warp = warp_shared_bytes(quant, k, tier)
        rows_per_block = _ROWS_PER_BLOCK // 2 if output is Output.SWIGLU else _ROWS_PER_BLOCK
        out_rows = n // 2 if output is Output.SWIGLU else n
        blocks = max(1, (out_rows + rows_per_block - 1) // rows_per_block)
        warps = self._warps(blocks, k, tier, per_warp)
        if warps * per_warp > self.max_shared - _STATIC_SHARED:
            raise ValueError(
                f"{quant.name} gemv needs {per_warp} bytes of shared memory per warp; "
                f"the device has {self.max_shared} per block"
            )
        args: tuple[int | float, ...] = (weight.ptr, x.ptr, y.ptr, n, k, batch, int(output))
        args += _norm_args(norm, batch, k) + (_sums_address(sums_of_squares, output, batch, n),)
        args += _rope_args(rope, output, batch, n)
        return Launch(
            self._kernels[quant, tier],
            (blocks, 1, 1),
            (32 * warps, 1, 1),
            args,
            shared_mem=warps * per_warp,
        )

    def _warps(self, blocks: int, k: int, tier: int, per_warp: int) -> int:
        """Warps per thread block: the GEMV streams its weights once, so what counts is that
        every SM gets the same share of the bytes. Where the whole grid is resident at once (an
        SM holds up to 16 of the kernel's warps), the blocks are made as wide as that allows: a
        4096-row matrix (128 blocks) runs 16 warps on 128 SMs where 8 warps would leave half of
        each SM idle, and a 14336-row gate/up (896 blocks) 2-warp blocks, 6 or 7 an SM, where
        8-warp blocks would run 3.4 waves, the last mostly idle. Larger grids take 8 warps."""
        room = self.max_shared - _STATIC_SHARED
        resident = min(_RESIDENT_WARPS, (room + _STATIC_SHARED + _SHARED_RESERVED) // per_warp)
        per_sm = -(-blocks // self.multiprocessors)
        warps = _MAX_WARPS if tier <= 2 else _MAX_WARPS_ABOVE_TIER_2
        if per_sm > resident // 2:
            warps = min(warps, 8)
        else:
            while warps > 2 and per_sm * warps > resident:
                warps //= 2
        # A warp takes stages of 8 GGUF blocks; more warps than stages would only wait.
        warps = min(warps, -(-k // (_STAGE_BLOCKS * BLOCK_WEIGHTS)))
        while warps > 1 and warps * per_warp > room:
            warps //= 2
        return warps

    def unload(self) -> None:
        self.module.unload()


def _norm_args(norm: RmsNorm | None, batch: int, k: int) -> tuple[int, float, int]:
    if norm is None:
        return (0, 0.0, 0)
    w = norm.weight
    if w.dtype != _F32 or w.shape != (k,) or w.ptr % 16:
        raise ValueError(
            f"a fused norm needs a 16-byte aligned float32 weight [{k}], got {w.dtype} {w.shape}"
        )
    if norm.partials is None:
        return (w.ptr, norm.eps, 0)
    return (w.ptr, norm.eps, _group_sums(norm.partials, batch, k // BLOCK_WEIGHTS).ptr)


def _group_sums(sums: DeviceArray, batch: int, groups: int) -> DeviceArray:
    """Check sums of squares of 32-column groups: float32 [>= batch, groups]."""
    if (
        sums.dtype != _F32
        or len(sums.shape) != 2
        or sums.shape[0] < batch
        or sums.shape[1] != groups
    ):
        raise ValueError(
            f"sums of squares must be float32 [>= {batch}, {groups}], got {sums.dtype} {sums.shape}"
        )
    return sums


def _sums_address(sums: DeviceArray | None, output: Output, batch: int, n: int) -> int:
    if sums is None:
        return 0
    if output not in (Output.STORE, Output.ADD):
        raise ValueError(f"a {output.name} gemv cannot write sums of squares")
    return _group_sums(sums, batch, -(-n // 32)).ptr


def _rope_args(
    rope: RopeCache | None, output: Output, batch: int, n: int
) -> tuple[int | float, ...]:
    if (rope is None) != (output is not Output.ROPE):
        raise ValueError("a gemv takes rope arguments exactly when its output is ROPE")
    if rope is None:
        return (0, 0, 0, 0, 0, 0, 0, 0, 0.0, 1.0)
    return rope.kernel_args(batch, n)
