"""Launch wrappers for elementwise.cu."""

from __future__ import annotations

from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface

_INTERFACE: Final = family_interface("elementwise")
# Elements per thread (elementwise.cu's VEC) and threads per block, a block size that keeps
# every SM busy on memory-bound work.
_VEC: Final = _INTERFACE.constant("vec")
_BLOCK: Final = (256, 1, 1)
_PER_BLOCK: Final = _VEC * _BLOCK[0]
_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)


class Elementwise:
    """The elementwise kernel family, loaded in the current context."""

    __slots__ = ("_gather_rows_f32", "_silu_mul_f32", "_vector_add_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._vector_add_f32: Kernel = _INTERFACE.kernel(module, "vector_add_f32")
        self._silu_mul_f32: Kernel = _INTERFACE.kernel(module, "silu_mul_f32")
        self._gather_rows_f32: Kernel = _INTERFACE.kernel(module, "gather_rows_f32")

    @classmethod
    def load(cls, device: Device) -> Elementwise:
        return cls(load_family("elementwise", device))

    def vector_add(
        self, a: DeviceArray, b: DeviceArray, out: DeviceArray, stream: Stream | None = None
    ) -> None:
        """out = a + b, elementwise, for float32 arrays of one shape."""
        if not a.dtype == b.dtype == out.dtype == _F32:
            raise TypeError(f"vector_add needs float32, got {a.dtype}, {b.dtype}, {out.dtype}")
        if not a.shape == b.shape == out.shape:
            raise ValueError(f"vector_add shapes differ: {a.shape}, {b.shape}, {out.shape}")
        n = a.size
        if n == 0:
            return
        blocks = (n + _PER_BLOCK - 1) // _PER_BLOCK
        self._vector_add_f32.launch((blocks, 1, 1), _BLOCK, a.ptr, b.ptr, out.ptr, n, stream=stream)

    def silu_mul_launch(self, gate_up: DeviceArray, out: DeviceArray) -> Launch:
        """out = silu(gate) * up for gate_up [rows, 2f] (gate first), out [rows, f]."""
        if gate_up.dtype != _F32 or out.dtype != _F32:
            raise TypeError(f"silu_mul needs float32, got {gate_up.dtype}, {out.dtype}")
        if len(out.shape) != 2 or gate_up.shape != (out.shape[0], 2 * out.shape[1]):
            raise ValueError(
                f"silu_mul needs gate_up [rows, 2f], out [rows, f], got "
                f"{gate_up.shape}, {out.shape}"
            )
        rows, f = out.shape
        blocks = max(1, (rows * f + _PER_BLOCK - 1) // _PER_BLOCK)
        return Launch(self._silu_mul_f32, (blocks, 1, 1), _BLOCK, (gate_up.ptr, out.ptr, f, rows))

    def gather_rows_launch(self, src: DeviceArray, index: DeviceArray, dst: DeviceArray) -> Launch:
        """dst[l] = src[index[l]] for float32 rows; the indices must lie in src's rows."""
        if src.dtype != _F32 or dst.dtype != _F32 or index.dtype != _I32:
            raise TypeError(
                f"gather_rows needs float32 rows and int32 indices, got "
                f"{src.dtype}, {index.dtype}, {dst.dtype}"
            )
        if len(src.shape) != 2 or len(dst.shape) != 2 or src.shape[1] != dst.shape[1]:
            raise ValueError(
                f"gather_rows needs src [R, n], dst [L, n], got {src.shape}, {dst.shape}"
            )
        if index.shape != (dst.shape[0],):
            raise ValueError(f"gather_rows needs index [{dst.shape[0]}], got {index.shape}")
        n = src.shape[1]
        block = (min(1024, max(32, (n + 31) // 32 * 32)), 1, 1)
        return Launch(
            self._gather_rows_f32,
            (max(1, dst.shape[0]), 1, 1),
            block,
            (src.ptr, index.ptr, dst.ptr, n),
        )

    def unload(self) -> None:
        self.module.unload()
