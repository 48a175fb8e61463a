#!/usr/bin/env python3
"""Time ember.kernels.quant_gemv on Llama-8B-sized weights and print a table of GB/s.

    PYTHONPATH=src python3 scripts/bench_quant_gemv.py [TYPE ...]   # e.g. Q4_K Q6_K; default all

Each timing replays a CUDA graph of LAUNCHES gemvs, cycling through enough copies of the
weight (over 256 MiB in all) that none is still in the 50 MiB L2 when read again, so the
numbers are HBM bandwidth, not L2's and not Python's launch rate. GB/s counts the bytes a
gemv must move: W, x and y.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ember.gpu import Device, DeviceArray, Event, Stream, StreamCapture
from ember.kernels.quant_gemv import QuantGemv, QuantType

# Llama-3-8B's o, q|k|v, gate, gate|up and down projections; SmolLM2-135M's gate and LM head.
SHAPES = [
    (4096, 4096),
    (6144, 4096),
    (14336, 4096),
    (28672, 4096),
    (4096, 14336),
    (1536, 576),
    (49152, 576),
]
BATCHES = (1, 2, 4, 8)  # every tier
LAUNCHES = 64
REPLAYS = 10
ROTATE_BYTES = 256 << 20


def time_gemv(
    gemv: QuantGemv, stream: Stream, quant: QuantType, n: int, k: int, batch: int
) -> tuple[float, int]:
    """Seconds per gemv, the best of REPLAYS graph replays, and the warps a block had."""
    nbytes = n * quant.row_bytes(k)
    copies = max(2, -(-ROTATE_BYTES // nbytes))
    weights = [DeviceArray.empty((n, quant.row_bytes(k)), np.uint8) for _ in range(copies)]
    for w in weights:
        w.buffer.memset_d32(0x3C003C00)  # fp16 1.0 everywhere: finite scales, any quants
    x = DeviceArray.from_numpy(np.ones((batch, k), np.float32))
    y = DeviceArray.empty((batch, n), np.float32)
    with StreamCapture(stream) as capture:
        for i in range(LAUNCHES):
            launch = gemv.gemv_launch(weights[i % copies], quant, x, y)
            launch(stream)
    exec_ = capture.graph.instantiate()
    exec_.launch(stream)
    stream.synchronize()
    best = float("inf")
    with Event.create() as start, Event.create() as end:
        for _ in range(REPLAYS):
            start.record(stream)
            exec_.launch(stream)
            end.record(stream)
            end.synchronize()
            best = min(best, start.elapsed_ms(end) / 1e3 / LAUNCHES)
    exec_.destroy()
    capture.graph.destroy()
    for array in (*weights, x, y):
        array.free()
    return best, launch.block[0] // 32


def _types() -> list[QuantType]:
    """The types named on the command line (e.g. Q4_K Q6_K), or every type."""
    names = sys.argv[1:]
    return [QuantType[name.upper()] for name in names] if names else list(QuantType)


def main() -> None:
    device = Device.get(0)
    context = device.retain_primary_context()
    context.make_current()
    gemv = QuantGemv.load(device)
    print("| type | N | K | batch | warps | µs | GB/s |\n|---|---|---|---|---|---|---|")
    with Stream.create() as stream:
        for quant in _types():
            for n, k in SHAPES:
                if k % quant.block_weights:  # K-quant rows are whole 256-weight blocks
                    continue
                for batch in BATCHES:
                    seconds, warps = time_gemv(gemv, stream, quant, n, k, batch)
                    moved = n * quant.row_bytes(k) + 4 * batch * (n + k)
                    print(
                        f"| {quant.name} | {n} | {k} | {batch} | {warps} | {seconds * 1e6:.1f} "
                        f"| {moved / seconds / 1e9:.0f} |",
                        flush=True,
                    )
    gemv.unload()
    context.release()


if __name__ == "__main__":
    main()
