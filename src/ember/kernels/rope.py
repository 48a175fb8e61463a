"""Launch wrappers for rope.cu: rotary embeddings in place on q and k (adjacent or NEOX pairs,
any frequencies), and a layer's attention prologue (biases, q/k norms, RoPE, the KV-cache
store)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import KernelStruct, family_interface

_INTERFACE: Final = family_interface("rope")
_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)
_F16: Final = np.dtype(np.float16)
_F64: Final = np.dtype(np.float64)
_THREADS: Final = 256  # per block: pairs x heads per pass, at most
_MAX_THREADS: Final = _INTERFACE.constant("max_threads")


class RopeQkvArgs(KernelStruct):
    """rope.cu's RopeQkv, field for field: the attention prologue's arguments, by value."""

    exported_as = "rope_qkv"
    _fields_ = (
        ("positions", ctypes.c_void_p),
        ("slots", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
        ("inv_freq", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("qk_norm", ctypes.c_void_p),
        ("n_q_heads", ctypes.c_int32),
        ("n_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("rot_dim", ctypes.c_int32),
        ("neox", ctypes.c_int32),
        ("eps", ctypes.c_float),
    )


@dataclass(frozen=True, slots=True)
class RopeCache:
    """The attention prologue of a layer on its fused q/k/v rows: biases added, q and k heads
    RMSNormed, q and k rotated, then k and v stored in fp16 at cache slots. rope_qkv_cache_f32's
    work, which quant_gemv's ROPE output also does (without the q/k norm)."""

    positions: DeviceArray  # int32 [batch]
    slots: DeviceArray  # int32 [batch]; < 0 stores nothing
    k_cache: DeviceArray  # float16 [slots, kv_heads, head_dim]
    v_cache: DeviceArray
    n_q_heads: int
    # float64 [rot_dim / 2]: radians per position of each pair (ember.model.rope's
    # radians_per_position); rot_dim < head_dim leaves the heads' tails unrotated.
    inv_freq: DeviceArray
    neox: bool = False  # pairs (x[i], x[i + rot_dim / 2]), else (x[2i], x[2i + 1])
    bias: DeviceArray | None = None  # float32 [(q_heads + 2 kv_heads) * head_dim]
    qk_norm: DeviceArray | None = None  # float32 [2, head_dim]: q heads' weight, then k's
    eps: float = 1e-6  # the q/k norm's

    def kernel_args(self, tokens: int, qkv_width: int) -> RopeQkvArgs:
        """The kernels' arguments for rows of `qkv_width` q/k/v values of `tokens` tokens,
        after checking every array against them."""
        k_cache, v_cache = self.k_cache, self.v_cache
        if k_cache.dtype != _F16 or v_cache.dtype != _F16:
            raise TypeError(
                f"rope_qkv_cache needs float16 caches, got {k_cache.dtype}, {v_cache.dtype}"
            )
        if self.positions.dtype != _I32 or self.slots.dtype != _I32:
            raise TypeError("rope_qkv_cache needs int32 positions and slots")
        if len(k_cache.shape) != 3 or k_cache.shape != v_cache.shape:
            raise ValueError(
                f"rope_qkv_cache needs caches [slots, kv_heads, head_dim], got "
                f"{k_cache.shape}, {v_cache.shape}"
            )
        _, kv_heads, head_dim = k_cache.shape
        if qkv_width != (self.n_q_heads + 2 * kv_heads) * head_dim:
            raise ValueError(
                f"qkv rows of {qkv_width} do not hold {self.n_q_heads} q and 2 x {kv_heads} kv "
                f"heads of {head_dim}"
            )
        if self.positions.shape != (tokens,) or self.slots.shape != (tokens,):
            raise ValueError(f"rope_qkv_cache needs positions and slots [{tokens}]")
        rot = _check_pairs(self.inv_freq, head_dim)
        _check_f32("bias", self.bias, (qkv_width,))
        _check_f32("q/k norm weight", self.qk_norm, (2, head_dim))
        return RopeQkvArgs(
            positions=self.positions.ptr,
            slots=self.slots.ptr,
            k_cache=k_cache.ptr,
            v_cache=v_cache.ptr,
            inv_freq=self.inv_freq.ptr,
            bias=0 if self.bias is None else self.bias.ptr,
            qk_norm=0 if self.qk_norm is None else self.qk_norm.ptr,
            n_q_heads=self.n_q_heads,
            n_kv_heads=kv_heads,
            head_dim=head_dim,
            rot_dim=rot,
            neox=int(self.neox),
            eps=self.eps,
        )


def _check_pairs(inv_freq: DeviceArray, head_dim: int) -> int:
    """The rotated dimensions `inv_freq` [rot_dim / 2] gives, checked against `head_dim`: a
    thread a pair, so head_dim / 2 threads a head (whole lane groups or warps, for the q/k
    norm's row sums: a power of two up to 32, or a multiple of 32)."""
    if inv_freq.dtype != _F64 or len(inv_freq.shape) != 1:
        raise TypeError(
            f"rope needs float64 inv_freq [rot_dim / 2], got {inv_freq.dtype} {inv_freq.shape}"
        )
    rot = 2 * inv_freq.shape[0]
    pairs = head_dim // 2
    whole = (pairs & (pairs - 1) == 0 and pairs <= 32) or pairs % 32 == 0
    if not 0 < rot <= head_dim or head_dim % 2 or pairs > _MAX_THREADS or not whole:
        raise ValueError(
            f"rope needs 0 < rot_dim {rot} <= head_dim {head_dim}, head_dim even, head_dim / 2 "
            f"a power of two up to 32 or a multiple of 32 up to {_MAX_THREADS}"
        )
    return rot


def _check_f32(what: str, array: DeviceArray | None, shape: tuple[int, ...]) -> None:
    if array is not None and (array.dtype != _F32 or array.shape != shape):
        raise ValueError(
            f"rope_qkv_cache needs a float32 {what} {list(shape)}, got {array.dtype} "
            f"{list(array.shape)}"
        )


class Rope:
    """The rope kernel family, loaded in the current context."""

    __slots__ = ("_rope_f32", "_rope_qkv_cache_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._rope_f32: Kernel = _INTERFACE.kernel(module, "rope_f32")
        self._rope_qkv_cache_f32: Kernel = _INTERFACE.kernel(
            module, "rope_qkv_cache_f32", RopeQkvArgs
        )

    @classmethod
    def load(cls, device: Device) -> Rope:
        return cls(load_family("rope", device))

    def apply(
        self,
        q: DeviceArray,
        k: DeviceArray,
        positions: DeviceArray,
        inv_freq: DeviceArray,
        neox: bool = False,
        stream: Stream | None = None,
    ) -> None:
        """Rotate q [T, q_heads, head_dim] and k [T, kv_heads, head_dim] in place: pair i of
        the first rot_dim = 2 * len(inv_freq) elements of each head at position p turns by
        p * inv_freq[i] radians (float64 inv_freq), as ember.model.rope does; `neox` pairs
        (x[i], x[i + rot_dim / 2]) instead of (x[2i], x[2i + 1])."""
        if q.dtype != _F32 or k.dtype != _F32 or positions.dtype != _I32:
            raise TypeError(
                f"rope needs float32 q, k and int32 positions, got {q.dtype}, {k.dtype}, "
                f"{positions.dtype}"
            )
        if len(q.shape) != 3 or len(k.shape) != 3 or q.shape[::2] != k.shape[::2]:
            raise ValueError(f"rope needs q, k as [T, heads, head_dim], got {q.shape}, {k.shape}")
        tokens, q_heads, head_dim = q.shape
        if positions.shape != (tokens,):
            raise ValueError(f"rope needs positions [{tokens}], got {positions.shape}")
        rot = _check_pairs(inv_freq, head_dim)
        if tokens == 0:
            return
        pairs = rot // 2
        block = (pairs, max(1, _THREADS // pairs), 1)
        self._rope_f32.launch(
            (tokens, 1, 1),
            block,
            q.ptr,
            k.ptr,
            positions.ptr,
            inv_freq.ptr,
            q_heads,
            k.shape[1],
            head_dim,
            rot,
            int(neox),
            stream=stream,
        )

    def qkv_cache_launch(self, qkv: DeviceArray, cache: RopeCache) -> Launch:
        """The attention prologue on qkv [T, (q_heads + 2 kv_heads) * head_dim], in place:
        `cache`'s biases added, its q/k norms applied, q and k rotated; then k and v stored in
        fp16 at its slots [T] of its k and v caches [num_slots, kv_heads, head_dim] (a negative
        slot stores nothing)."""
        if qkv.dtype != _F32:
            raise TypeError(f"rope_qkv_cache needs float32 qkv, got {qkv.dtype}")
        if len(qkv.shape) != 2:
            raise ValueError(f"rope_qkv_cache needs qkv [T, width], got {qkv.shape}")
        tokens, width = qkv.shape
        args = cache.kernel_args(tokens, width)
        pairs = args.head_dim // 2
        return Launch(
            self._rope_qkv_cache_f32,
            (max(1, tokens), 1, 1),
            (pairs, max(1, _THREADS // pairs), 1),
            (qkv.ptr, bytes(args)),
        )

    def unload(self) -> None:
        self.module.unload()
