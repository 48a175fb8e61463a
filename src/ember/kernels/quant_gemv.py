"""Launch wrapper for quant_gemv.cu: y = x @ W.T with W a GGUF tensor of a QuantType, with
the decode step's neighbouring work optionally fused in (RMSNorm before; residual add, SwiGLU,
or the q/k/v biases, RoPE and the KV-cache store after)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import KernelStruct, family_interface
from ember.kernels.rope import RopeCache

_INTERFACE: Final = family_interface("quant_gemv")
_F32: Final = np.dtype(np.float32)
_U8: Final = np.dtype(np.uint8)
# quant_gemv.cu's tiers: (batch tier, threads, blocks per SM, static shared bytes) each.
_TIERS: Final = _INTERFACE.rows("tiers", 4)
# One kernel per batch tier; a batch runs on the smallest tier that holds it (a tier-T kernel
# computes at least T / 2 + 1 rows whatever the batch, and stores only the batch's).
BATCH_TIERS: Final = tuple(tier for tier, *_ in _TIERS)
MAX_BATCH: Final = BATCH_TIERS[-1]
BLOCK_WEIGHTS: Final = 32
SUPER_BLOCK_WEIGHTS: Final = 256  # a K-quant block
# quant_gemv.cu's layout: a thread block of up to THREADS / 32 warps of its tier owns 32 weight
# rows; each warp streams stages of 32 rows x 8 GGUF blocks through its shared memory, with
# the x of one stage (warp_bytes: for 16-byte-aligned rows, and for others).
_ROWS_PER_BLOCK: Final = _INTERFACE.constant("rows_per_block")
_STAGE_BLOCKS: Final = _INTERFACE.constant("stage_blocks")
_MAX_WARPS: Final = {tier: threads // 32 for tier, threads, _, _ in _TIERS}
# Warps of the kernel an SM holds at once: what its launch bounds leave registers for.
_RESIDENT_WARPS: Final = {tier: threads * blocks // 32 for tier, threads, blocks, _ in _TIERS}
_SHARED_RESERVED: Final = 1024  # the driver's own shared memory per block
# The kernel's static shared memory (the rows' norm scales), on top of the dynamic: the
# largest tier's, budgeted for in every tier.
_STATIC_SHARED: Final = max(static for *_, static in _TIERS)
_WARP_BYTES: Final = {
    (block_bytes, tier): (aligned, general)
    for block_bytes, tier, aligned, general in _INTERFACE.rows("warp_bytes", 4)
}


class Output(IntEnum):
    """What the GEMV does with y = x @ W.T (quant_gemv.cu's Out)."""

    STORE = 0
    ADD = 1  # y += x @ W.T
    SWIGLU = 2  # W is gate rows then up rows [2F, K]; y [batch, F] = silu(gate) * up
    ROPE = 3  # y is q|k|v of one layer: biases added; q, k rotated; k, v stored in the cache
    # ROPE over NEOX pairs: the wrapper's choice for a RopeCache with neox (W's rows are then
    # computed in pairs half a head apart); pass ROPE.
    ROPE_NEOX = 4


class GemvFusion(KernelStruct):
    """quant_gemv.cu's Fusion, field for field: a launch's fusions, passed by value."""

    exported_as = "gemv_fusion"
    _fields_ = (
        ("norm_weight", ctypes.c_void_p),
        ("norm_partials", ctypes.c_void_p),
        ("out_partials", ctypes.c_void_p),
        ("positions", ctypes.c_void_p),
        ("slots", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
        ("inv_freq", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("out", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("n_q_heads", ctypes.c_int32),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("rot_dim", ctypes.c_int32),
    )


class GemvOutputAt(KernelStruct):
    """quant_gemv.cu's OutputAt: y's row stride, and for ROPE the q|k|v row of W's row 0."""

    exported_as = "gemv_output_at"
    _fields_ = (("y_stride", ctypes.c_int32), ("row_offset", ctypes.c_int32))


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
    """A block type GGUF stores weights in, named as GGMLQuantizationType names it; the value is
    its block's bytes (each type's differs)."""

    Q4_0 = 18
    Q4_1 = 20
    Q8_0 = 34
    Q5_0 = 22
    Q5_1 = 24
    Q4_K = 144
    Q5_K = 176
    Q6_K = 210

    @property
    def block_bytes(self) -> int:
        return self.value

    @property
    def block_weights(self) -> int:
        """Weights a block holds: 256 for the K-quants' super-blocks, else 32."""
        return SUPER_BLOCK_WEIGHTS if self.name.endswith("_K") else BLOCK_WEIGHTS

    @property
    def unit_format(self) -> bool:
        """Read through quant_formats.cuh's one view (its kernels pick their warps without
        looking at the batch: a row's result does not depend on it)."""
        return self not in (QuantType.Q4_0, QuantType.Q4_1, QuantType.Q8_0)

    def row_bytes(self, k: int) -> int:
        return k // self.block_weights * self.value


def warp_shared_bytes(quant: QuantType, k: int, tier: int) -> int:
    """Shared memory one warp of quant_gemv uses: its stages of weights (16-byte-aligned rows,
    K a multiple of 256 (128 for Q4_1), are copied as they are; others need room for a start
    up to 14 bytes into a stage's first granule) and one stage of quantised x."""
    aligned, general = _WARP_BYTES[quant.block_bytes, tier]
    return aligned if quant.row_bytes(k) % 16 == 0 else general


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
    y_at: int | None = None,
) -> None:
    """K a positive multiple of the type's block weights matching W's row bytes, y [M, y_cols]
    (default N) or, with `y_at`, y [M, >= y_at + y_cols] (the product's columns of a wider y),
    W and x 16-byte aligned."""
    m, k = x.shape
    n = weight.shape[0]
    cols = n if y_cols is None else y_cols
    per_block = quant.block_weights
    if y_at is None:
        fits_y = y.shape == (m, cols)
    else:
        fits_y = y.shape[0] == m and y_at >= 0 and y_at + cols <= y.shape[1]
    if k == 0 or k % per_block or weight.shape[1] != quant.row_bytes(k) or not fits_y:
        raise ValueError(
            f"{quant.name} {op}: x {x.shape} and y {y.shape} do not fit weight bytes "
            f"{weight.shape} (K a positive multiple of {per_block}, "
            f"{quant.block_bytes} bytes per block of {per_block} weights of a row)"
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
            (q, tier): _INTERFACE.kernel(
                module, f"quant_gemv_{q.name.lower()}_b{tier}", GemvFusion, GemvOutputAt
            )
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
        y_at: int | None = None,
    ) -> Launch:
        """y[b, n] = sum_k x[b, k] * W[n, k] for a batch of 1 to 8 rows of x.

        `weight` is the tensor's raw bytes as uint8 [N, K / 32 * block bytes]; x is float32
        [batch, K], y float32 [batch, N] ([batch, N / 2] for SWIGLU). weight and x must be
        16-byte aligned. x is quantised to int8 per 32 values on the way (relative error up to
        1/254 of each block's largest |x|), as llama.cpp's integer GEMV does. `norm` normalises
        x first; `output` says what happens to the sums (`rope` describes the cache for ROPE).
        `sums_of_squares` (STORE or ADD): also write the sums of squares of y's 32-column
        groups, float32 [batch, ceil(N / 32)], for the next GEMV's norm (`RmsNorm.partials`).
        `y_at`: y is wider, and this product's columns start at column y_at (a part of a
        matrix stacked from tensors of different block types; for ROPE, y is all of q|k|v and
        W its rows from y_at, whole heads).
        """
        batch, k, n = check_operands("gemv", weight, x, y)
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"gemv takes a batch of 1 to {MAX_BATCH}, got {batch}")
        if output is Output.SWIGLU:
            if n % 2:
                raise ValueError(f"swiglu gemv needs W [2F, K], got {n} rows")
            check_fit("swiglu gemv", weight, quant, x, y, n // 2, y_at)
        else:
            check_fit("gemv", weight, quant, x, y, y_at=y_at)
        if y_at is not None and sums_of_squares is not None:
            raise ValueError("a gemv into part of y cannot write the sums of squares of its rows")
        tier = next(t for t in BATCH_TIERS if t >= batch)
        per_warp = warp_shared_bytes(quant, k, tier)
        rows_per_block = _ROWS_PER_BLOCK // 2 if output is Output.SWIGLU else _ROWS_PER_BLOCK
        out_rows = n // 2 if output is Output.SWIGLU else n
        blocks = max(1, (out_rows + rows_per_block - 1) // rows_per_block)
        if quant.unit_format:
            # The warp count sets a row's order of summation: one count for every batch (the
            # largest tier's, whose warps are the most bounded) keeps rows batch invariant.
            warps = self._warps(blocks, k, MAX_BATCH, warp_shared_bytes(quant, k, MAX_BATCH))
        else:
            warps = self._warps(blocks, k, tier, per_warp)
        if warps * per_warp > self.max_shared - _STATIC_SHARED:
            raise ValueError(
                f"{quant.name} gemv needs {per_warp} bytes of shared memory per warp; "
                f"the device has {self.max_shared} per block"
            )
        if output is Output.ROPE_NEOX:
            raise ValueError("pass Output.ROPE: the RopeCache's neox picks the NEOX epilogue")
        at = 0 if y_at is None else y_at
        fusion = GemvFusion(out=int(output))
        _set_norm(fusion, norm, batch, k)
        fusion.out_partials = _sums_address(sums_of_squares, output, batch, n)
        _set_rope(fusion, rope, output, batch, n, at, y.shape[1])
        return Launch(
            self._kernels[quant, tier],
            (blocks, 1, 1),
            (32 * warps, 1, 1),
            (
                weight.ptr,
                x.ptr,
                y.ptr + 4 * at,
                n,
                k,
                batch,
                bytes(fusion),
                bytes(GemvOutputAt(y_stride=y.shape[1], row_offset=at)),
            ),
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
        per_sm_bytes = room + _STATIC_SHARED + _SHARED_RESERVED
        resident = min(_RESIDENT_WARPS[tier], per_sm_bytes // per_warp)
        per_sm = -(-blocks // self.multiprocessors)
        warps = _MAX_WARPS[tier]
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


def _set_norm(fusion: GemvFusion, norm: RmsNorm | None, batch: int, k: int) -> None:
    if norm is None:
        return
    w = norm.weight
    if w.dtype != _F32 or w.shape != (k,) or w.ptr % 16:
        raise ValueError(
            f"a fused norm needs a 16-byte aligned float32 weight [{k}], got {w.dtype} {w.shape}"
        )
    fusion.norm_weight = w.ptr
    fusion.eps = norm.eps
    if norm.partials is not None:
        fusion.norm_partials = _group_sums(norm.partials, batch, k // BLOCK_WEIGHTS).ptr


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


def _set_rope(
    fusion: GemvFusion,
    rope: RopeCache | None,
    output: Output,
    batch: int,
    n: int,
    first_row: int,
    qkv_width: int,
) -> None:
    """The rope epilogue's arguments: W's n rows are rows first_row.. of a q|k|v stack of
    qkv_width rows."""
    if (rope is None) != (output is not Output.ROPE):
        raise ValueError("a gemv takes rope arguments exactly when its output is ROPE")
    if rope is None:
        return
    args = rope.kernel_args(batch, qkv_width)
    if first_row % args.head_dim or n % args.head_dim:
        raise ValueError(
            f"a ROPE gemv over rows {first_row}-{first_row + n} of q|k|v needs whole heads of "
            f"{args.head_dim}"
        )
    if args.qk_norm:
        raise ValueError(
            "a ROPE gemv cannot apply q/k norms (a thread block holds 32 rows, not whole "
            "heads): store q|k|v and run rope_qkv_cache after it"
        )
    if args.neox and args.rot_dim != args.head_dim:
        raise ValueError(
            f"a NEOX ROPE gemv rotates whole heads (rot_dim {args.rot_dim} of head_dim "
            f"{args.head_dim}): store q|k|v and run rope_qkv_cache after it"
        )
    fusion.out = int(Output.ROPE_NEOX if args.neox else Output.ROPE)
    for name in ("positions", "slots", "k_cache", "v_cache", "inv_freq", "bias"):
        setattr(fusion, name, getattr(args, name))
    fusion.n_q_heads = args.n_q_heads
    fusion.n_kv_heads = args.n_kv_heads
    fusion.head_dim = args.head_dim
    fusion.rot_dim = args.rot_dim
