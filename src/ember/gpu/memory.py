"""Device memory and page-locked host memory, with explicit ownership.

A buffer is freed by `free()` or by leaving its `with` block, exactly once (ember.gpu.handle).
Views share their parent's memory and never free it. Copies take a `stream`: with one they are
queued asynchronously on it, without one they are synchronous.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ember.gpu.driver import api, call
from ember.gpu.handle import Handle
from ember.gpu.stream import Stream


def _host_array_bytes(array: npt.NDArray[Any], what: str) -> int:
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    return int(array.nbytes)


class DeviceBuffer(Handle):
    """`nbytes` of device memory at `ptr`, in the context that was current when allocated."""

    __slots__ = ("_parent", "_ptr", "nbytes")
    RELEASED = "freed"

    def __init__(self, ptr: int, nbytes: int, parent: DeviceBuffer | None = None) -> None:
        super().__init__()
        self._ptr = ptr
        self.nbytes = nbytes
        self._parent = parent  # set for views: keeps the owner reachable, never freed here

    @classmethod
    def alloc(cls, nbytes: int) -> DeviceBuffer:
        if nbytes <= 0:
            raise ValueError(f"a device buffer needs at least one byte, not {nbytes}")
        return cls(int(call(api().cuMemAlloc, nbytes)), nbytes)

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any], stream: Stream | None = None) -> DeviceBuffer:
        buffer = cls.alloc(_host_array_bytes(array, "the source array"))
        buffer.copy_from_host(array, stream)
        return buffer

    @property
    def ptr(self) -> int:
        """The device address; CudaError once the buffer (or its owner) has been freed."""
        self._check_alive()
        if self._parent is not None:
            self._parent._check_alive()
        return self._ptr

    @property
    def owns_memory(self) -> bool:
        return self._parent is None

    def view(self, offset: int, nbytes: int) -> DeviceBuffer:
        """A non-owning buffer over bytes [offset, offset + nbytes) of this one."""
        if offset < 0 or nbytes <= 0 or offset + nbytes > self.nbytes:
            raise ValueError(
                f"view [{offset}, {offset + nbytes}) is outside a buffer of {self.nbytes} bytes"
            )
        owner = self if self._parent is None else self._parent
        return DeviceBuffer(self.ptr + offset, nbytes, owner)

    def free(self) -> None:
        self._release_once()

    def _release(self) -> None:
        if self._parent is not None:
            raise ValueError("a view does not own its memory; free the buffer it came from")
        call(api().cuMemFree, self._ptr)

    def _name(self) -> str:
        return f"device buffer of {self.nbytes} bytes at 0x{self._ptr:x}"

    def memset_d8(self, value: int, stream: Stream | None = None) -> None:
        """Set every byte to `value` (0..255)."""
        cu = api()
        if stream is None:
            call(cu.cuMemsetD8, self.ptr, value, self.nbytes)
        else:
            call(cu.cuMemsetD8Async, self.ptr, value, self.nbytes, stream.handle)

    def memset_d32(self, value: int, stream: Stream | None = None) -> None:
        """Set every 32-bit word to the bit pattern `value` (0xFFFFFFFF is a float32 NaN)."""
        if self.nbytes % 4:
            raise ValueError(f"memset_d32 needs a multiple of 4 bytes, not {self.nbytes}")
        cu = api()
        count = self.nbytes // 4
        if stream is None:
            call(cu.cuMemsetD32, self.ptr, value, count)
        else:
            call(cu.cuMemsetD32Async, self.ptr, value, count, stream.handle)

    def copy_from_host(self, src: npt.NDArray[Any], stream: Stream | None = None) -> None:
        """Copy all of `src` into the start of this buffer.

        With a stream and page-locked `src` (a PinnedHostBuffer view) the copy is truly
        asynchronous: keep `src` alive and unchanged until the stream passes this point.
        """
        nbytes = _host_array_bytes(src, "the source array")
        self._check_fits(nbytes)
        cu = api()
        if stream is None:
            call(cu.cuMemcpyHtoD, self.ptr, src.ctypes.data, nbytes)
        else:
            call(cu.cuMemcpyHtoDAsync, self.ptr, src.ctypes.data, nbytes, stream.handle)

    def copy_to_host(self, dst: npt.NDArray[Any], stream: Stream | None = None) -> None:
        """Copy the start of this buffer into all of `dst` (see copy_from_host on async)."""
        nbytes = _host_array_bytes(dst, "the destination array")
        self._check_fits(nbytes)
        if not dst.flags.writeable:
            raise ValueError("the destination array is read-only")
        cu = api()
        if stream is None:
            call(cu.cuMemcpyDtoH, dst.ctypes.data, self.ptr, nbytes)
        else:
            call(cu.cuMemcpyDtoHAsync, dst.ctypes.data, self.ptr, nbytes, stream.handle)

    def copy_from(
        self, src: DeviceBuffer, nbytes: int | None = None, stream: Stream | None = None
    ) -> None:
        """Device-to-device copy of `nbytes` (default: all of `src`) into this buffer."""
        count = src.nbytes if nbytes is None else nbytes
        if count > src.nbytes:
            raise ValueError(f"cannot copy {count} bytes out of a {src.nbytes}-byte buffer")
        self._check_fits(count)
        cu = api()
        if stream is None:
            call(cu.cuMemcpyDtoD, self.ptr, src.ptr, count)
        else:
            call(cu.cuMemcpyDtoDAsync, self.ptr, src.ptr, count, stream.handle)

    def to_numpy(
        self, dtype: npt.DTypeLike, shape: tuple[int, ...] | None = None
    ) -> npt.NDArray[Any]:
        """A new host array holding this buffer's bytes (synchronous)."""
        item = np.dtype(dtype).itemsize
        out = np.empty(shape if shape is not None else self.nbytes // item, dtype=dtype)
        self.copy_to_host(out)
        return out

    def _check_fits(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            raise ValueError(f"{nbytes} bytes do not fit in a device buffer of {self.nbytes}")


class PinnedHostBuffer(Handle):
    """Page-locked host memory (cuMemHostAlloc): the only host memory the copy engines can
    read or write asynchronously, at full PCIe/NVLink speed.

    `array()` views stay valid only until `free()`; they must not be used after it.
    """

    __slots__ = ("nbytes", "ptr")
    RELEASED = "freed"

    def __init__(self, ptr: int, nbytes: int) -> None:
        super().__init__()
        self.ptr = ptr
        self.nbytes = nbytes

    @classmethod
    def alloc(
        cls, nbytes: int, *, portable: bool = False, write_combined: bool = False
    ) -> PinnedHostBuffer:
        """`portable`: usable from every context, not only the current one. `write_combined`:
        faster host-to-device transfers, but very slow for the host to read."""
        if nbytes <= 0:
            raise ValueError(f"a pinned buffer needs at least one byte, not {nbytes}")
        cu = api()
        flags = 0
        if portable:
            flags |= cu.CU_MEMHOSTALLOC_PORTABLE
        if write_combined:
            flags |= cu.CU_MEMHOSTALLOC_WRITECOMBINED
        return cls(int(call(cu.cuMemHostAlloc, nbytes, flags)), nbytes)

    def array(self, dtype: npt.DTypeLike, shape: tuple[int, ...] | None = None) -> npt.NDArray[Any]:
        """A numpy view of this memory (no copy)."""
        self._check_alive()
        dt = np.dtype(dtype)
        count = self.nbytes // dt.itemsize if shape is None else math.prod(shape)
        if count * dt.itemsize > self.nbytes:
            raise ValueError(f"{count} x {dt} does not fit in {self.nbytes} pinned bytes")
        raw = (ctypes.c_uint8 * (count * dt.itemsize)).from_address(self.ptr)
        view: npt.NDArray[Any] = np.frombuffer(memoryview(raw), dtype=dt, count=count)
        return view if shape is None else view.reshape(shape)

    def free(self) -> None:
        self._release_once()

    def _release(self) -> None:
        call(api().cuMemFreeHost, self.ptr)

    def _name(self) -> str:
        return f"pinned host buffer of {self.nbytes} bytes"
