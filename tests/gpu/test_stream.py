"""ember.gpu.stream: streams, events, timing."""

from __future__ import annotations

import pytest

from ember.errors import CudaError
from ember.gpu import Context, DeviceBuffer, Event, Stream

pytestmark = pytest.mark.gpu


def test_event_timing_and_queries(context: Context, stream: Stream) -> None:
    with Event.create() as start, Event.create() as end, DeviceBuffer.alloc(1 << 26) as buf:
        start.record(stream)
        for _ in range(10):
            buf.memset_d32(0x3F800000, stream)
        end.record(stream)
        stream.synchronize()
        assert start.is_done() and end.is_done()
        elapsed = start.elapsed_ms(end)
    # 640 MB of stores: well over a microsecond on any GPU, well under a second.
    assert 0.001 < elapsed < 1000


def test_untimed_events_refuse_timing(context: Context, stream: Stream) -> None:
    with Event.create(timing=False) as start, Event.create(timing=False) as end:
        start.record(stream)
        end.record(stream)
        end.synchronize()
        with pytest.raises(CudaError) as caught:
            start.elapsed_ms(end)
    assert caught.value.name == "CUDA_ERROR_INVALID_HANDLE"


def test_destroy_twice(context: Context) -> None:
    stream = Stream.create(non_blocking=False, priority=-1)
    stream.destroy()
    with pytest.raises(CudaError, match="twice"):
        stream.destroy()
