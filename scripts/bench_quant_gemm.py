#!/usr/bin/env python3
"""Time ember.kernels.quant_gemm on the default model's and Llama-8B's shapes and print a table.

    PYTHONPATH=src python3 scripts/bench_quant_gemm.py [TYPE ...]   # e.g. Q4_K Q6_K; default all
    PYTHONPATH=src python3 scripts/bench_quant_gemm.py --invariant --rows 1,16,64 Q4_K
    PYTHONPATH=src python3 scripts/bench_quant_gemm.py --invariant --shares 1,2,4,8 Q4_K
    PYTHONPATH=src python3 scripts/bench_quant_gemm.py --mmq --rows 64,128,512 Q4_K Q5_K Q6_K

Each launch has a split-K workspace, as the engine's do, so the small-M rows split K where the
engine's plan would (`--invariant`: batch-invariant mode's plan, its fixed K shares;
`--shares`: that plan with each of these K share counts instead, a row each). `--mmq`: for the
K-quants, two more rows after each of the GEMM's: quant_mmq's int8 path (ember.kernels.
quant_mmq) with x's quantisation in every launch ("mmq ... + q8", what one product costs), and
its GEMM alone ("mmq ...", x quantised once for the products that share it: a stack's parts).

Each timing replays a CUDA graph of LAUNCHES gemms, cycling through enough copies of the
weight (over 256 MiB in all) that none is still in the 50 MiB L2 when read again, so the
small-M rows measure reading W from HBM, not from L2, and not Python's launch rate. TFLOP/s
counts 2 M N K; GB/s counts the bytes of W only (the kernel reads W once per M tile, the rest
of the M tiles hit L2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ember.gpu import Device, DeviceArray, Event, Launch, Stream, StreamCapture
from ember.kernels.quant_gemm import GemmPlan, QuantGemm
from ember.kernels.quant_gemv import QuantType
from ember.kernels.quant_mmq import MMQ_TYPES, QuantMmq, workspace_bytes

# (N, K): the default model's (q and o; fused q, k, v; gate or up; fused gate and up; the
# output head; down), then Llama 8B's (q and o; fused q, k, v; fused gate and up; down).
SHAPES = [
    (576, 576),
    (960, 576),
    (1536, 576),
    (3072, 576),
    (49152, 576),
    (576, 1536),
    (4096, 4096),
    (6144, 4096),
    (28672, 4096),
    (4096, 14336),
]
ROWS = (16, 64, 256, 512, 1024)
LAUNCHES = 32
REPLAYS = 5
ROTATE_BYTES = 256 << 20


def time_graph(stream: Stream, launches: list[list[Launch]]) -> float:
    """Seconds per entry of `launches` (each a list run in order), the best of REPLAYS replays
    of a graph of LAUNCHES entries, cycling through them."""
    with StreamCapture(stream) as capture:
        for i in range(LAUNCHES):
            for launch in launches[i % len(launches)]:
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
    return best


def rotated_weights(stream: Stream, quant: QuantType, n: int, k: int) -> list[DeviceArray]:
    """Enough copies of an [n, k] weight that none is still in L2 when read again."""
    nbytes = n * quant.row_bytes(k)
    copies = max(2, -(-ROTATE_BYTES // nbytes))
    weights = [DeviceArray.empty((n, quant.row_bytes(k)), np.uint8) for _ in range(copies)]
    for w in weights:
        w.buffer.memset_d32(0x3C003C00, stream)  # fp16 1.0 everywhere: finite scales, any quants
    return weights


def time_mmq(
    mmq: QuantMmq,
    stream: Stream,
    quant: QuantType,
    n: int,
    k: int,
    x: DeviceArray,
    y: DeviceArray,
    quantize: bool,
) -> float:
    """Seconds per MMQ product, with x's quantisation in each (`quantize`) or done once."""
    weights = rotated_weights(stream, quant, n, k)
    with DeviceArray.empty((workspace_bytes(*x.shape),), np.uint8) as space:
        quantize_x = mmq.quantize_launch(x, space)
        if not quantize:
            quantize_x(stream)
        launches = [
            [quantize_x] * quantize + [mmq.gemm_launch(w, quant, x, y, space)] for w in weights
        ]
        seconds = time_graph(stream, launches)
    for w in weights:
        w.free()
    return seconds


def time_gemm(
    gemm: QuantGemm,
    stream: Stream,
    quant: QuantType,
    n: int,
    k: int,
    x: DeviceArray,
    y: DeviceArray,
    workspace: DeviceArray,
    plan: GemmPlan | None,
) -> float:
    """Seconds per gemm, the best of REPLAYS graph replays (the launches share `workspace`, one
    after another on one stream, as the engine's do); `plan`: batch-invariant mode's, else the
    default plan."""
    weights = rotated_weights(stream, quant, n, k)
    launches = [
        gemm.gemm_launch(w, quant, x, y, workspace=workspace)
        if plan is None
        else gemm.gemm_launch(
            w,
            quant,
            x,
            y,
            plan.tile,
            workspace,
            plan.splits,
            invariant=True,
            slices=plan.slices,
        )
        for w in weights
    ]
    best = time_graph(stream, [[launch] for launch in launches])
    for w in weights:
        w.free()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("types", nargs="*", help="block types (e.g. Q4_K Q6_K); default all")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="rows of x (M)")
    parser.add_argument("--invariant", action="store_true", help="batch-invariant plans")
    parser.add_argument("--mmq", action="store_true", help="also time quant_mmq (K-quants)")
    parser.add_argument(
        "--shares", help="with --invariant: K share counts to run instead of the plan's (1,2,4)"
    )
    args = parser.parse_args()
    shares: list[int | None] = (
        [int(s) for s in args.shares.split(",")] if args.shares and args.invariant else [None]
    )
    types = [QuantType[name.upper()] for name in args.types] or list(QuantType)
    rows = [int(r) for r in args.rows.split(",")]
    device = Device.get(0)
    context = device.retain_primary_context()
    context.make_current()
    gemm = QuantGemm.load(device)
    mmq = QuantMmq.load(device) if args.mmq else None
    print(f"{device.name}, {device.multiprocessor_count} SMs\n")
    print(
        "| type | N | K | M | tile x splits x slices | µs | TFLOP/s | W GB/s |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    with (
        Stream.create() as stream,
        DeviceArray.empty((gemm.max_workspace_bytes,), np.uint8) as workspace,
    ):
        workspace.buffer.memset_d32(0, stream)  # the split counters start (and stay) at zero
        for quant in types:
            for n, k in SHAPES:
                if k % quant.block_weights:  # K-quant rows are whole 256-weight blocks
                    continue
                for m, share in ((m, s) for m in rows for s in shares):
                    invariant = (
                        gemm.invariant_plan(quant, m, n, k, workspace.nbytes, share)
                        if args.invariant
                        else None
                    )
                    with (
                        DeviceArray.from_numpy(np.ones((m, k), np.float32)) as x,
                        DeviceArray.empty((m, n), np.float32) as y,
                    ):
                        seconds = time_gemm(gemm, stream, quant, n, k, x, y, workspace, invariant)
                        mmq_rows = []
                        if mmq is not None and quant in MMQ_TYPES and mmq.runs(quant):
                            tile_name = mmq.tile(quant, m, n).name.lower()
                            for quantize in (True, False):
                                mmq_seconds = time_mmq(mmq, stream, quant, n, k, x, y, quantize)
                                label = f"mmq {tile_name}" + (" + q8" if quantize else "")
                                mmq_rows.append((label, mmq_seconds))
                    plan = invariant or gemm.plan(m, n, k, quant=quant)
                    tile = f"{plan.tile.name.lower()} x {plan.splits} x {plan.slices}"
                    flops = 2 * m * n * k
                    w_bytes = n * quant.row_bytes(k)
                    for label, t in [(tile, seconds), *mmq_rows]:
                        print(
                            f"| {quant.name} | {n} | {k} | {m} | {label} | {t * 1e6:.1f} "
                            f"| {flops / t / 1e12:.1f} | {w_bytes / t / 1e9:.0f} |",
                            flush=True,
                        )
    if mmq is not None:
        mmq.unload()
    gemm.unload()
    context.release()


if __name__ == "__main__":
    main()
