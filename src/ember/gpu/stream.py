"""Streams (ordered queues of device work) and events (markers in them, also used as timers)."""

from __future__ import annotations

from typing import Any

from ember.gpu.driver import api, call, check
from ember.gpu.handle import Handle


def stream_handle(stream: Stream | None) -> Any:
    """The CUstream for `stream`; None means the legacy default stream (handle 0)."""
    return api().CUstream(0) if stream is None else stream.handle


def _finished(query: str, handle: Any) -> bool:
    """cuStreamQuery's or cuEventQuery's answer: done, not ready yet, or an error."""
    cu = api()
    (err,) = getattr(cu, query)(handle)
    if err == cu.CUresult.CUDA_ERROR_NOT_READY:
        return False
    check(query, err)
    return True


class Stream(Handle):
    """A stream in the current context. Non-blocking by default: it does not synchronise with
    the legacy default stream, which would serialise otherwise independent work."""

    __slots__ = ()
    KIND, RELEASED, DRIVER_RELEASE = "stream", "destroyed", "cuStreamDestroy"

    @classmethod
    def create(cls, *, non_blocking: bool = True, priority: int = 0) -> Stream:
        cu = api()
        flags = (
            cu.CUstream_flags.CU_STREAM_NON_BLOCKING
            if non_blocking
            else cu.CUstream_flags.CU_STREAM_DEFAULT
        )
        return cls(call(cu.cuStreamCreateWithPriority, int(flags), priority))

    def synchronize(self) -> None:
        call(api().cuStreamSynchronize, self.handle)

    def is_done(self) -> bool:
        """True when all work queued so far has finished."""
        return _finished("cuStreamQuery", self.handle)

    def wait(self, event: Event) -> None:
        """Make later work on this stream wait for `event` (no host blocking)."""
        call(api().cuStreamWaitEvent, self.handle, event.handle, 0)

    def destroy(self) -> None:
        self._release_once()


class Event(Handle):
    """A marker recorded into a stream; with timing on, two of them measure device time."""

    __slots__ = ()
    KIND, RELEASED, DRIVER_RELEASE = "event", "destroyed", "cuEventDestroy"

    @classmethod
    def create(cls, *, timing: bool = True, blocking_sync: bool = False) -> Event:
        cu = api()
        flags = 0
        if not timing:
            # Events without timing are cheaper to record and wait on (driver docs).
            flags |= int(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING)
        if blocking_sync:
            flags |= int(cu.CUevent_flags.CU_EVENT_BLOCKING_SYNC)
        return cls(call(cu.cuEventCreate, flags))

    def record(self, stream: Stream | None = None) -> None:
        call(api().cuEventRecord, self.handle, stream_handle(stream))

    def synchronize(self) -> None:
        call(api().cuEventSynchronize, self.handle)

    def is_done(self) -> bool:
        """True when the work before the event's last record has finished."""
        return _finished("cuEventQuery", self.handle)

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds of device time from this event to `end` (both recorded and complete)."""
        return float(call(api().cuEventElapsedTime, self.handle, end.handle))

    def destroy(self) -> None:
        self._release_once()
