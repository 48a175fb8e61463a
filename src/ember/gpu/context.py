"""A device's primary context: what allocations, modules and streams belong to.

Ember uses the primary context (one per device, shared with any other driver user in the
process) rather than creating its own, so that a process holds one context per GPU.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ember.errors import CudaError
from ember.gpu.device import Device
from ember.gpu.driver import api, call


class Context:
    """A retained primary context; release it (or use it as a context manager) when done.

    Driver calls act on the calling thread's current context: call `make_current()` in each
    thread, and again after switching to another device's context.
    """

    __slots__ = ("_released", "device", "handle")

    def __init__(self, device: Device, handle: Any) -> None:
        self.device = device
        self.handle = handle  # CUcontext
        self._released = False

    @classmethod
    def retain_primary(cls, device: Device) -> Context:
        handle = call(api().cuDevicePrimaryCtxRetain, device.handle)
        return cls(device, handle)

    def make_current(self) -> None:
        self._check_alive()
        call(api().cuCtxSetCurrent, self.handle)

    def synchronize(self) -> None:
        """Wait for all work in this context; raises the first asynchronous error, if any."""
        self.make_current()
        call(api().cuCtxSynchronize)

    def memory_info(self) -> tuple[int, int]:
        """(free, total) device memory in bytes."""
        self.make_current()
        free, total = call(api().cuMemGetInfo)
        return int(free), int(total)

    def release(self) -> None:
        """Drop this retain; the driver destroys the context (and frees all it owns) at zero."""
        self._check_alive()
        self._released = True
        call(api().cuDevicePrimaryCtxRelease, self.device.handle)

    def _check_alive(self) -> None:
        if self._released:
            raise CudaError(f"the primary context of GPU {self.device.ordinal} was released")

    def __enter__(self) -> Context:
        self.make_current()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
