"""ember.gpu.graph: capture, replay, in-place update."""

from __future__ import annotations

import numpy as np
import pytest

from ember.errors import CudaError
from ember.gpu import DeviceArray, Graph, Stream, StreamCapture
from ember.kernels.elementwise import Elementwise

pytestmark = pytest.mark.gpu
N = 100_003


def random(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def capture_chain(
    ew: Elementwise,
    stream: Stream,
    a: DeviceArray,
    b: DeviceArray,
    t: DeviceArray,
    out: DeviceArray,
) -> Graph:
    """out = (a + b) + a, as two kernel nodes."""
    with StreamCapture(stream) as capture:
        ew.vector_add(a, b, t, stream)
        ew.vector_add(t, a, out, stream)
    return capture.graph


def test_capture_replay_and_update(elementwise: Elementwise, stream: Stream) -> None:
    arrays = [DeviceArray.empty((N,), np.float32) for _ in range(6)]
    a, b, t, out, a2, out2 = arrays
    try:
        host_a, host_b = random(1), random(2)
        a.copy_from_host(host_a)
        b.copy_from_host(host_b)
        out.buffer.memset_d32(0xFFFFFFFF)

        graph = capture_chain(elementwise, stream, a, b, t, out)
        assert graph.node_count() == 2
        out.buffer.memset_d32(0xFFFFFFFF)  # nothing ran during capture: still NaN after it
        assert np.isnan(out.to_numpy()).all()
        exec_ = graph.instantiate()
        exec_.upload(stream)
        exec_.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.to_numpy(), (host_a + host_b) + host_a)

        # Replay reads the buffers' current contents.
        host_a = random(3)
        a.copy_from_host(host_a)
        exec_.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.to_numpy(), (host_a + host_b) + host_a)

        # Same topology, other buffers: updated in place, no new instantiation.
        host_a2 = random(4)
        a2.copy_from_host(host_a2)
        other = capture_chain(elementwise, stream, a2, b, t, out2)
        assert exec_.update(other)
        exec_.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out2.to_numpy(), (host_a2 + host_b) + host_a2)

        # Another topology cannot be taken in place.
        with StreamCapture(stream) as capture:
            elementwise.vector_add(a, b, out, stream)
        assert not exec_.update(capture.graph)

        for g in (graph, other, capture.graph):
            g.destroy()
        exec_.destroy()
        with pytest.raises(CudaError, match="twice"):
            exec_.destroy()
    finally:
        for array in arrays:
            array.free()


def test_failed_capture_leaves_the_stream_usable(elementwise: Elementwise, stream: Stream) -> None:
    with pytest.raises(RuntimeError, match="boom"), StreamCapture(stream):
        raise RuntimeError("boom")
    with DeviceArray.from_numpy(random(5)) as a, DeviceArray.empty((N,), np.float32) as out:
        elementwise.vector_add(a, a, out, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.to_numpy(), random(5) * 2)


def test_illegal_call_during_capture_is_a_driver_error(stream: Stream) -> None:
    with pytest.raises(CudaError) as caught, StreamCapture(stream):
        stream.synchronize()  # waiting on a stream that is being captured is not allowed
    assert caught.value.name == "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"
    stream.synchronize()  # out of capture mode again
