"""A device's primary context: what allocations, modules and streams belong to.

Ember uses the primary context (one per device, shared with any other driver user in the
process) rather than creating its own, so that a process holds one context per GPU.
"""

from __future__ import annotations

from typing import Any, Self

from ember.gpu.device import Device
from ember.gpu.driver import api, call
from ember.gpu.handle import Handle


class Context(Handle):
    """A retained primary context; release it (or use it as a context manager, which also makes
    it current) when done.

    Driver calls act on the calling thread's current context: call `make_current()` in each
    thread, and again after switching to another device's context.
    """

    __slots__ = ("device",)

    def __init__(self, device: Device, handle: Any) -> None:
        super().__init__(handle)  # CUcontext
        self.device = device

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
        self._release_once()

    def _release(self) -> None:
        call(api().cuDevicePrimaryCtxRelease, self.device.handle)

    def _name(self) -> str:
        return f"the primary context of GPU {self.device.ordinal}"

    def __enter__(self) -> Self:
        self.make_current()
        return self
