"""Launch wrappers for elementwise.cu."""

from __future__ import annotations

from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Arg, Kernel
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family

# Elements per thread and threads per block, as elementwise.cu's VEC and a block size that
# keeps every SM busy on memory-bound work.
_VEC: Final = 4
_BLOCK: Final = (256, 1, 1)
_PER_BLOCK: Final = _VEC * _BLOCK[0]
_F32: Final = np.dtype(np.float32)


class Elementwise:
    """The elementwise kernel family, loaded in the current context."""

    __slots__ = ("_vector_add_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._vector_add_f32: Kernel = module.function(
            "vector_add_f32", (Arg.PTR, Arg.PTR, Arg.PTR, Arg.I64)
        )

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

    def unload(self) -> None:
        self.module.unload()
