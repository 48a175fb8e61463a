"""Launch wrapper for rope.cu: rotary embeddings in place on q and k, adjacent-pair convention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface

_INTERFACE: Final = family_interface("rope")
_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)
_F16: Final = np.dtype(np.float16)
_THREADS: Final = 256  # per block: pairs x heads per pass


@dataclass(frozen=True, slots=True)
class RopeCache:
    """RoPE on the q and k heads of a fused q/k/v row, then k and v stored in fp16 at cache
    slots: rope_qkv_cache_f32's work, which quant_gemv's ROPE output also does."""

    positions: DeviceArray  # int32 [batch]
    slots: DeviceArray  # int32 [batch]; < 0 stores nothing
    k_cache: DeviceArray  # float16 [slots, kv_heads, head_dim]
    v_cache: DeviceArray
    n_q_heads: int
    base: float
    rot_dim: int | None = None  # None: the whole head
    linear_factor: float = 1.0

    def kernel_args(self, tokens: int, qkv_width: int) -> tuple[int | float, ...]:
        """For rows of `qkv_width` q/k/v values of `tokens` tokens, checked: the kernels'
        arguments after qkv (positions, slots, k and v caches, q heads, kv heads, head_dim,
        rotated dims, base, linear factor)."""
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
        rot = head_dim if self.rot_dim is None else self.rot_dim
        if rot <= 0 or rot % 2 or rot > head_dim or head_dim % 2 or head_dim > 2048:
            raise ValueError(
                f"rope needs an even rot_dim <= an even head_dim, got {rot}, {head_dim}"
            )
        return (
            self.positions.ptr,
            self.slots.ptr,
            k_cache.ptr,
            v_cache.ptr,
            self.n_q_heads,
            kv_heads,
            head_dim,
            rot,
            self.base,
            self.linear_factor,
        )


class Rope:
    """The rope kernel family, loaded in the current context."""

    __slots__ = ("_rope_f32", "_rope_qkv_cache_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._rope_f32: Kernel = _INTERFACE.kernel(module, "rope_f32")
        self._rope_qkv_cache_f32: Kernel = _INTERFACE.kernel(module, "rope_qkv_cache_f32")

    @classmethod
    def load(cls, device: Device) -> Rope:
        return cls(load_family("rope", device))

    def apply(
        self,
        q: DeviceArray,
        k: DeviceArray,
        positions: DeviceArray,
        base: float,
        rot_dim: int | None = None,
        linear_factor: float = 1.0,
        stream: Stream | None = None,
    ) -> None:
        """Rotate q [T, q_heads, head_dim] and k [T, kv_heads, head_dim] in place.

        Pair i of the first `rot_dim` (default head_dim) elements of each head at position p
        turns by p / linear_factor * base ** (-2i / rot_dim), as ember.model.rope does.
        """
        if q.dtype != _F32 or k.dtype != _F32 or positions.dtype != _I32:
            raise TypeError(
                f"rope needs float32 q, k and int32 positions, got {q.dtype}, {k.dtype}, "
                f"{positions.dtype}"
            )
        if len(q.shape) != 3 or len(k.shape) != 3 or q.shape[::2] != k.shape[::2]:
            raise ValueError(f"rope needs q, k as [T, heads, head_dim], got {q.shape}, {k.shape}")
        tokens, q_heads, head_dim = q.shape
        rot = head_dim if rot_dim is None else rot_dim
        if positions.shape != (tokens,):
            raise ValueError(f"rope needs positions [{tokens}], got {positions.shape}")
        if rot <= 0 or rot % 2 or rot > min(head_dim, 2048) or head_dim % 2:
            raise ValueError(
                f"rope needs an even rot_dim <= an even head_dim, got {rot}, {head_dim}"
            )
        if (q.ptr | k.ptr) % 8:
            raise ValueError("rope needs q and k 8-byte aligned (pairs are read as float2)")
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
            q_heads,
            k.shape[1],
            head_dim,
            rot,
            base,
            linear_factor,
            stream=stream,
        )

    def qkv_cache_launch(self, qkv: DeviceArray, cache: RopeCache) -> Launch:
        """Rotate the q and k heads of qkv [T, (q_heads + 2 kv_heads) * head_dim] in place and
        store k and v in fp16 at `cache`'s slots [T] of its k and v caches [num_slots,
        kv_heads, head_dim]; a negative slot stores nothing."""
        if qkv.dtype != _F32:
            raise TypeError(f"rope_qkv_cache needs float32 qkv, got {qkv.dtype}")
        if len(qkv.shape) != 2:
            raise ValueError(f"rope_qkv_cache needs qkv [T, width], got {qkv.shape}")
        tokens, width = qkv.shape
        args = cache.kernel_args(tokens, width)
        pairs = int(args[6]) // 2  # head_dim / 2
        return Launch(
            self._rope_qkv_cache_f32,
            (max(1, tokens), 1, 1),
            (pairs, max(1, _THREADS // pairs), 1),
            (qkv.ptr, *args),
        )

    def unload(self) -> None:
        self.module.unload()
