"""ember.gpu.handle: released exactly once, by its method or its `with` block (CPU only)."""

from __future__ import annotations

import pytest

from ember.errors import CudaError
from ember.gpu.handle import Handle


class Token(Handle):
    """A handle whose release is recorded instead of reaching a driver."""

    __slots__ = ("fail", "releases")
    RELEASED = "dropped"

    def __init__(self) -> None:
        super().__init__()
        self.releases = 0
        self.fail = False

    def drop(self) -> None:
        self._release_once()

    def use(self) -> None:
        self._check_alive()

    def _release(self) -> None:
        if self.fail:
            raise CudaError("the driver said no")
        self.releases += 1

    def _name(self) -> str:
        return "token"


def test_released_once_and_refused_after() -> None:
    token = Token()
    assert repr(token) == "<token>" and not token.released
    token.use()
    token.drop()
    assert token.released and token.releases == 1
    assert repr(token) == "<token, dropped>"
    with pytest.raises(CudaError, match="token dropped twice"):
        token.drop()
    with pytest.raises(CudaError, match="token used after it was dropped"):
        token.use()
    assert token.releases == 1


def test_with_block_releases_unless_released_already() -> None:
    with Token() as token:
        pass
    assert token.releases == 1
    with Token() as early:
        early.drop()
    assert early.releases == 1


def test_a_failed_release_leaves_the_handle_alive() -> None:
    token = Token()
    token.fail = True
    with pytest.raises(CudaError, match="said no"):
        token.drop()
    assert not token.released
    token.fail = False
    token.drop()
    assert token.releases == 1


def test_every_gpu_handle_shares_the_base() -> None:
    from ember.gpu.array import DeviceArray
    from ember.gpu.context import Context
    from ember.gpu.graph import Graph, GraphExec
    from ember.gpu.handle import Scoped
    from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
    from ember.gpu.module import Module
    from ember.gpu.peer import PeerGroup
    from ember.gpu.stream import Event, Stream

    for cls in (DeviceBuffer, PinnedHostBuffer, Graph, GraphExec, Module, Stream, Event):
        assert issubclass(cls, Handle), cls
    assert issubclass(Context, Handle) and issubclass(PeerGroup, Handle)
    assert issubclass(DeviceArray, Scoped)
    # __slots__ kept: no per-instance dict on the hot objects.
    assert not hasattr(DeviceBuffer(1 << 20, 16), "__dict__")


def test_device_buffer_views_are_never_freed() -> None:
    from ember.gpu.memory import DeviceBuffer

    buffer = DeviceBuffer(1 << 20, 256)  # never allocated: nothing here reaches the driver
    view = buffer.view(0, 128)
    with pytest.raises(ValueError, match="does not own"):
        view.free()
    with pytest.raises(ValueError, match="does not own"), view:
        pass
    assert not view.released and view.ptr == 1 << 20
