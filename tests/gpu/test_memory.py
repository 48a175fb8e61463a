"""ember.gpu.memory and ember.gpu.array: allocation, copies both ways, memset, ownership."""

from __future__ import annotations

import numpy as np
import pytest

from ember.errors import CudaError
from ember.gpu import (
    Context,
    DeviceArray,
    DeviceBuffer,
    Event,
    PinnedHostBuffer,
    Stream,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int64])
@pytest.mark.parametrize("size", [1, 7, 4096, 1_000_003])
def test_round_trip_random_data(context: Context, dtype: type, size: int) -> None:
    rng = np.random.default_rng(size)
    host: np.ndarray = (rng.standard_normal(size) * 100).astype(dtype)
    with DeviceBuffer.from_numpy(host) as buffer:
        assert buffer.nbytes == host.nbytes
        back = buffer.to_numpy(dtype)
    np.testing.assert_array_equal(back, host)


def test_memset(context: Context) -> None:
    with DeviceBuffer.alloc(4096) as buffer:
        buffer.memset_d8(0xAB)
        assert (buffer.to_numpy(np.uint8) == 0xAB).all()
        buffer.memset_d32(0xFFFFFFFF)
        assert np.isnan(buffer.to_numpy(np.float32)).all()
        one = np.float32(1.5).view(np.uint32)
        buffer.memset_d32(int(one))
        assert (buffer.to_numpy(np.float32) == 1.5).all()
    with DeviceBuffer.alloc(6) as odd, pytest.raises(ValueError):
        odd.memset_d32(0)


def test_device_to_device_and_views(context: Context) -> None:
    host = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    with DeviceBuffer.from_numpy(host) as src, DeviceBuffer.alloc(host.nbytes) as dst:
        dst.memset_d32(0xFFFFFFFF)
        dst.view(400, 400).copy_from(src.view(400, 400))
        back = dst.to_numpy(np.float32)
    np.testing.assert_array_equal(back[100:200], host[100:200])
    assert np.isnan(back[:100]).all() and np.isnan(back[200:]).all()


def test_async_copies_ordered_across_streams_by_events(context: Context, stream: Stream) -> None:
    n = 1 << 22
    rng = np.random.default_rng(2)
    with (
        PinnedHostBuffer.alloc(4 * n) as pinned_in,
        PinnedHostBuffer.alloc(4 * n) as pinned_out,
        DeviceBuffer.alloc(4 * n) as a,
        DeviceBuffer.alloc(4 * n) as b,
        Stream.create() as other,
        Event.create() as start,
        Event.create() as copied,
        Event.create() as end,
    ):
        src = pinned_in.array(np.float32)
        src[:] = rng.standard_normal(n, dtype=np.float32)
        dst = pinned_out.array(np.float32)
        dst[:] = np.nan
        start.record(stream)
        a.copy_from_host(src, stream)
        copied.record(stream)
        other.wait(copied)  # without this, `other` could read `a` before the copy lands
        b.copy_from(a, stream=other)
        b.copy_to_host(dst, other)
        end.record(other)
        end.synchronize()
        assert end.is_done() and stream.is_done()
        elapsed = start.elapsed_ms(end)
        np.testing.assert_array_equal(dst, src)
    assert elapsed > 0


def test_async_copy_ordering(context: Context, stream: Stream) -> None:
    n = 1 << 20
    host = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    out = np.full(n, np.nan, dtype=np.float32)
    with PinnedHostBuffer.alloc(host.nbytes) as pin, DeviceBuffer.alloc(host.nbytes) as dev:
        view = pin.array(np.float32, (n,))
        view[:] = host
        dev.memset_d32(0xFFFFFFFF, stream)
        dev.copy_from_host(view, stream)
        dev.copy_to_host(out, stream)
        stream.synchronize()
    np.testing.assert_array_equal(out, host)


def test_pinned_array_views(context: Context) -> None:
    with PinnedHostBuffer.alloc(64, portable=True) as pin:
        matrix = pin.array(np.float32, (4, 4))
        matrix[:] = np.arange(16).reshape(4, 4)
        assert pin.array(np.float32)[5] == 5.0
        with pytest.raises(ValueError, match="does not fit"):
            pin.array(np.float64, (9,))
    with pytest.raises(CudaError, match="after it was freed"):
        pin.array(np.uint8)


def test_ownership_errors(context: Context) -> None:
    buffer = DeviceBuffer.alloc(256)
    view = buffer.view(0, 128)
    with pytest.raises(ValueError, match="does not own"):
        view.free()
    buffer.free()
    with pytest.raises(CudaError, match="freed twice"):
        buffer.free()
    with pytest.raises(CudaError, match="after it was freed"):
        _ = view.ptr
    with pytest.raises(ValueError, match="outside"):
        DeviceBuffer(0, 16).view(8, 16)
    with pytest.raises(ValueError):
        DeviceBuffer.alloc(0)


def test_copy_size_checks(context: Context) -> None:
    with DeviceBuffer.alloc(16) as small:
        with pytest.raises(ValueError, match="do not fit"):
            small.copy_from_host(np.zeros(8, np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            small.copy_from_host(np.zeros((4, 4), np.float32)[:, 0])


def test_device_array(context: Context) -> None:
    host = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    with DeviceArray.from_numpy(host) as array:
        assert array.shape == (3, 5) and array.size == 15 and array.nbytes == 60
        np.testing.assert_array_equal(array.to_numpy(), host)
        np.testing.assert_array_equal(array.flat_slice(5, 10).to_numpy(), host[1])
        with pytest.raises(ValueError, match="host array is float64"):
            array.copy_from_host(host.astype(np.float64))
    with DeviceArray.empty((0,), np.float32) as empty:
        assert empty.to_numpy().shape == (0,)
