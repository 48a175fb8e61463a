"""What every driver object Ember owns shares: it is released exactly once, by its own method
(DeviceBuffer.free, Stream.destroy, Module.unload, Context.release...) or by leaving its `with`
block, and is refused after that.

Nothing is released behind the caller's back (no `__del__`). A second release raises instead
of reaching the driver: the handle may by then name a newer object (a freed address may belong
to a newer allocation), and releasing it again would release someone else's.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Self

from ember.errors import CudaError
from ember.gpu.driver import api, call


class Scoped:
    """`with x:` ends by releasing x, unless that was done already (`_leave`)."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        raise NotImplementedError


class Handle(Scoped):
    """A driver object released exactly once. A subclass says what it is (KIND), what releasing
    it is called (RELEASED) and which driver call releases its `handle` (DRIVER_RELEASE), or
    overrides `_name` and `_release`; its public method, named as the driver names the act
    (free, destroy, unload...), calls `_release_once`."""

    __slots__ = ("_released", "handle")

    KIND: ClassVar[str] = "driver object"
    RELEASED: ClassVar[str] = "released"
    DRIVER_RELEASE: ClassVar[str] = ""

    def __init__(self, handle: Any = None) -> None:
        self.handle = handle  # the driver's CUstream, CUmodule...
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def _release_once(self) -> None:
        """Release now; CudaError if that was done already. Released only once the driver
        call succeeds."""
        if self._released:
            raise CudaError(f"{self._name()} {self.RELEASED} twice")
        self._release()
        self._released = True

    def _check_alive(self) -> None:
        if self._released:
            raise CudaError(f"{self._name()} used after it was {self.RELEASED}")

    def _leave(self) -> None:
        if not self._released:
            self._release_once()

    def _name(self) -> str:
        return self.KIND

    def _release(self) -> None:
        call(getattr(api(), self.DRIVER_RELEASE), self.handle)

    def __repr__(self) -> str:
        return f"<{self._name()}{f', {self.RELEASED}' if self._released else ''}>"
