"""A device buffer with a dtype and a shape: what kernel wrappers take and check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.gpu.handle import Scoped
from ember.gpu.memory import DeviceBuffer
from ember.gpu.stream import Stream


@dataclass(frozen=True, slots=True)
class DeviceArray(Scoped):
    """A C-contiguous array in device memory. Owns its buffer unless it is a view (`flat_slice`,
    `view`); `with` frees an owned buffer, unless freed already."""

    buffer: DeviceBuffer
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: npt.DTypeLike) -> DeviceArray:
        dt = np.dtype(dtype)
        # A zero-size array still gets one element of memory: cuMemAlloc rejects 0 bytes.
        nbytes = max(math.prod(shape), 1) * dt.itemsize
        return cls(DeviceBuffer.alloc(nbytes), tuple(shape), dt)

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any], stream: Stream | None = None) -> DeviceArray:
        out = cls.empty(array.shape, array.dtype)
        out.copy_from_host(array, stream)
        return out

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def copy_from_host(self, src: npt.NDArray[Any], stream: Stream | None = None) -> None:
        self._check_host(src)
        if self.size:
            self.buffer.copy_from_host(src, stream)

    def copy_to_host(self, dst: npt.NDArray[Any], stream: Stream | None = None) -> None:
        self._check_host(dst)
        if self.size:
            self.buffer.copy_to_host(dst, stream)

    def to_numpy(self) -> npt.NDArray[Any]:
        out = np.empty(self.shape, dtype=self.dtype)
        self.copy_to_host(out)
        return out

    def flat_slice(self, start: int, stop: int) -> DeviceArray:
        """A 1-D non-owning view of elements [start, stop) of the flattened array."""
        if not 0 <= start < stop <= self.size:
            raise ValueError(f"slice [{start}, {stop}) is outside an array of {self.size}")
        item = self.dtype.itemsize
        view = self.buffer.view(start * item, (stop - start) * item)
        return DeviceArray(view, (stop - start,), self.dtype)

    def view(
        self, shape: tuple[int, ...], dtype: npt.DTypeLike, offset_bytes: int = 0
    ) -> DeviceArray:
        """A non-owning array of `shape` and `dtype` over this one's memory from `offset_bytes`:
        how one workspace allocation is carved into a forward pass's activations."""
        dt = np.dtype(dtype)
        nbytes = max(math.prod(shape), 1) * dt.itemsize
        return DeviceArray(self.buffer.view(offset_bytes, nbytes), tuple(shape), dt)

    def free(self) -> None:
        self.buffer.free()

    def _check_host(self, host: npt.NDArray[Any]) -> None:
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(
                f"host array is {host.dtype}{list(host.shape)}, "
                f"device array is {self.dtype}{list(self.shape)}"
            )

    def _leave(self) -> None:
        if self.buffer.owns_memory and not self.buffer.released:
            self.buffer.free()
