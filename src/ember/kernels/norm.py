"""Launch wrappers for norm.cu: RMSNorm, alone, fused with the residual add before it, or of
gathered rows."""

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

_INTERFACE: Final = family_interface("norm")
_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)
_MAX_THREADS: Final = _INTERFACE.constant("max_threads")


def _threads(n: int) -> int:
    """One float4 per thread where the row allows, in whole warps, at most a full block."""
    per_float4 = (n + 3) // 4
    return min(_MAX_THREADS, max(32, (per_float4 + 31) // 32 * 32))


def _check(name: str, w: DeviceArray, *rows: DeviceArray) -> tuple[int, int]:
    arrays = (w, *rows)
    if any(a.dtype != _F32 for a in arrays):
        raise TypeError(f"{name} needs float32, got {', '.join(str(a.dtype) for a in arrays)}")
    shape = rows[0].shape
    if not shape or any(a.shape != shape for a in rows) or w.shape != shape[-1:]:
        raise ValueError(
            f"{name} needs rows of one shape [..., n] and a weight [n], got "
            f"{', '.join(str(a.shape) for a in arrays)}"
        )
    n = shape[-1]
    return rows[0].size // n if n else 0, n


class Norm:
    """The norm kernel family, loaded in the current context."""

    __slots__ = ("_add_rms_norm_f32", "_gather_rms_norm_f32", "_rms_norm_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._rms_norm_f32: Kernel = _INTERFACE.kernel(module, "rms_norm_f32")
        self._add_rms_norm_f32: Kernel = _INTERFACE.kernel(module, "add_rms_norm_f32")
        self._gather_rms_norm_f32: Kernel = _INTERFACE.kernel(module, "gather_rms_norm_f32")

    @classmethod
    def load(cls, device: Device) -> Norm:
        return cls(load_family("norm", device))

    def rms_norm_launch(
        self, x: DeviceArray, weight: DeviceArray, out: DeviceArray, eps: float
    ) -> Launch:
        """out = x / sqrt(mean(x**2) + eps) * weight over the last axis, float32."""
        rows, n = _check("rms_norm", weight, x, out)
        return Launch(
            self._rms_norm_f32,
            (max(rows, 1), 1, 1),
            (_threads(n), 1, 1),
            (x.ptr, weight.ptr, out.ptr, n, eps),
        )

    def gather_rms_norm_launch(
        self,
        x: DeviceArray,
        index: DeviceArray,
        weight: DeviceArray,
        out: DeviceArray,
        eps: float,
    ) -> Launch:
        """out[l] = rms_norm(x[index[l]]) * weight: x [T, n], index int32 [L], out [L, n]."""
        _check("gather_rms_norm", weight, x)
        _check("gather_rms_norm", weight, out)
        if index.dtype != _I32 or index.shape != out.shape[:1]:
            raise ValueError(
                f"gather_rms_norm needs int32 index [{out.shape[0]}], got {index.dtype} "
                f"{index.shape}"
            )
        rows, n = out.shape
        return Launch(
            self._gather_rms_norm_f32,
            (max(rows, 1), 1, 1),
            (_threads(n), 1, 1),
            (x.ptr, index.ptr, weight.ptr, out.ptr, n, eps),
        )

    def add_rms_norm_launch(
        self,
        x: DeviceArray,
        residual: DeviceArray,
        weight: DeviceArray,
        out: DeviceArray,
        eps: float,
    ) -> Launch:
        """residual += x, then out = rms_norm(residual) * weight: a layer's add and next norm."""
        rows, n = _check("add_rms_norm", weight, x, residual, out)
        return Launch(
            self._add_rms_norm_f32,
            (max(rows, 1), 1, 1),
            (_threads(n), 1, 1),
            (x.ptr, residual.ptr, weight.ptr, out.ptr, n, eps),
        )

    def rms_norm(
        self,
        x: DeviceArray,
        weight: DeviceArray,
        out: DeviceArray,
        eps: float,
        stream: Stream | None = None,
    ) -> None:
        launch = self.rms_norm_launch(x, weight, out, eps)
        if x.size:
            launch(stream)

    def add_rms_norm(
        self,
        x: DeviceArray,
        residual: DeviceArray,
        weight: DeviceArray,
        out: DeviceArray,
        eps: float,
        stream: Stream | None = None,
    ) -> None:
        launch = self.add_rms_norm_launch(x, residual, weight, out, eps)
        if x.size:
            launch(stream)

    def unload(self) -> None:
        self.module.unload()
