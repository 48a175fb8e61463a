"""Launch overhead, measured and printed (run with -s), never asserted: timings vary by host.

Host cost per launch is timed while the GPU is kept busy by a long kernel queued first, so the
numbers are the Python + driver cost of enqueueing, not the GPU's rate of running tiny kernels.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest

from ember.gpu import DeviceArray, Event, Stream, StreamCapture
from ember.gpu.driver import api
from ember.gpu.launch import ArgPack
from ember.kernels.elementwise import Elementwise

pytestmark = pytest.mark.gpu

SMALL = 1024  # one block of 256 threads
BATCH = 200  # launches per timed batch: well under the driver's launch queue depth
BATCHES = 40
GRAPH_NODES = 1000


def host_us_per_launch(
    variants: dict[str, tuple[Callable[[], None], int]],
    blocker: Callable[[], None],
    stream: Stream,
) -> dict[str, tuple[float, float]]:
    """(median, min) over batches of host µs per launch for each variant.

    Each batch is queued behind `blocker`, and the variants take turns batch by batch, so that
    a slow spell of the host (seen: ±2 µs between runs) hits them all alike.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(BATCHES):
        for name, (launch, batch) in variants.items():
            blocker()
            start = time.perf_counter_ns()
            for _ in range(batch):
                launch()
            samples[name].append((time.perf_counter_ns() - start) / batch / 1000)
            stream.synchronize()
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


def device_us(run: Callable[[], None], stream: Stream, count: int, repeats: int = 5) -> float:
    """Median device µs of `run()` divided by `count`, timed with events."""
    times = []
    with Event.create() as start, Event.create() as end:
        for _ in range(repeats):
            start.record(stream)
            run()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_ms(end) * 1000 / count)
    return statistics.median(times)


def test_launch_overhead(elementwise: Elementwise, stream: Stream) -> None:
    cu = api()
    rng = np.random.default_rng(9)
    big_n = 1 << 27  # three 512 MiB arrays: one add takes ~0.5 ms on an H100
    small = [DeviceArray.from_numpy(rng.standard_normal(SMALL).astype(np.float32)) for _ in "abc"]
    big = [DeviceArray.empty((big_n,), np.float32) for _ in "abc"]
    try:
        a, b, out = small
        kernel = elementwise._vector_add_f32
        function = kernel.function
        handle = stream.handle
        grid, block = (1, 1, 1), (256, 1, 1)

        def blocker() -> None:
            for _ in range(4):
                elementwise.vector_add(big[0], big[1], big[2], stream)

        prepacked = ArgPack(kernel.signature)
        address = prepacked.pack((a.ptr, b.ptr, out.ptr, SMALL))
        pointer_types = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)
        a_ptr, b_ptr, out_ptr = a.ptr, b.ptr, out.ptr

        def raw_prepacked() -> None:
            cu.cuLaunchKernel(function, 1, 1, 1, 256, 1, 1, 0, handle, address, 0)

        def raw_tuple_form() -> None:
            args = ((a_ptr, b_ptr, out_ptr, SMALL), pointer_types)
            cu.cuLaunchKernel(function, 1, 1, 1, 256, 1, 1, 0, handle, args, 0)

        # The same call straight into libcuda through ctypes: separates the bindings' own
        # per-call cost from the driver's.
        libcuda = ctypes.CDLL("libcuda.so.1")
        c_launch = libcuda.cuLaunchKernel
        c_launch.argtypes = [ctypes.c_void_p, *[ctypes.c_uint] * 7, *[ctypes.c_void_p] * 3]
        c_launch.restype = ctypes.c_int
        function_address, stream_address = int(function), int(handle)

        def ctypes_prepacked() -> None:
            c_launch(function_address, 1, 1, 1, 256, 1, 1, 0, stream_address, address, None)

        def kernel_launch() -> None:
            kernel.launch(grid, block, a_ptr, b_ptr, out_ptr, SMALL, stream=stream)

        def wrapper() -> None:
            elementwise.vector_add(a, b, out, stream)

        with StreamCapture(stream) as capture:
            for _ in range(GRAPH_NODES):
                elementwise.vector_add(a, b, out, stream)
        graph = capture.graph
        exec_ = graph.instantiate()
        exec_.upload(stream)

        def replay() -> None:
            exec_.launch(stream)

        variants = {
            "cuLaunchKernel, params prepacked (floor)": (raw_prepacked, BATCH),
            "cuLaunchKernel, bindings' tuple form": (raw_tuple_form, BATCH),
            "libcuda cuLaunchKernel via ctypes": (ctypes_prepacked, BATCH),
            "Kernel.launch (ArgPack, checked)": (kernel_launch, BATCH),
            "Elementwise.vector_add (shape checks)": (wrapper, BATCH),
            # Few replays per batch: each runs GRAPH_NODES kernels, and the host must not
            # wait for queue space behind them.
            f"one cuGraphLaunch ({GRAPH_NODES} nodes)": (replay, 5),
        }
        for launch, _batch in variants.values():
            launch()
        stream.synchronize()
        host = host_us_per_launch(variants, blocker, stream)

        def many_launches() -> None:
            for _ in range(2000):
                kernel_launch()

        gpu_per_kernel = device_us(many_launches, stream, 2000)

        def replays() -> None:
            for _ in range(10):
                exec_.launch(stream)

        graph_per_node = device_us(replays, stream, 10 * GRAPH_NODES)
        exec_.destroy()
        graph.destroy()
        np.testing.assert_array_equal(out.to_numpy(), a.to_numpy() + b.to_numpy())
    finally:
        for array in (*small, *big):
            array.free()

    print(f"\nlaunch overhead, vector_add_f32 on {SMALL} elements, {BATCHES} batches")
    print(f"{'what':<50}{'median µs':>10}{'min µs':>8}")
    for name, (median, best) in host.items():
        print(f"{'host: ' + name:<50}{median:>10.2f}{best:>8.2f}")
    print(f"{'device: 2000 single launches, per launch':<50}{gpu_per_kernel:>10.2f}")
    print(f"{'device: graph replay, per node':<50}{graph_per_node:>10.2f}")
