#!/usr/bin/env python3
"""Time every quant_gemm tile on Llama-8B's (Q4_0) and SmolLM2-135M's (Q4_1) projections, and
on Llama-8B's as a Q4_K_M file holds them (8b-k: Q4_K, and Q6_K for down, as half its layers'
ffn_down and attn_v are).

    python3 scripts/bench_gemm.py [--rows 16,32,64,128,256,512] [--shapes 8b,135m,8b-k]

One line per (shape, M): the plan QuantGemm picks (with a split-K workspace) with its time,
weight bandwidth and tensor throughput; the fastest tile and split measured; the plan without a
workspace (what a caller that passes none gets); then each tile's best time over K unsplit and
split half and all of its own split_count ways (`µs/splits` when a split won). A tile is timed
where its rows are within 1/8 to 2x of M. A `!` marks a result that differs from the M64 tile's
by more than 1e-3 of its largest value (run tests/gpu/test_quant_gemm.py). Last, per-step sums
of the four projections over all layers: the first quant_gemm's choice (its unsplit M16..M128
tiles), the plan, the plan without a workspace and the best measured.

Each time is the best of REPLAYS replays of a CUDA graph of launches that cycle through copies
of W (random blocks made on the device) totalling over ROTATE_BYTES, so W comes from HBM, not
L2; the 135M matrices are too small for that (64 copies at most) and are marked L2.
TB/s counts W's bytes once per launch; TFLOP/s counts 2 M N K.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ember.gpu import Device, DeviceArray, Event, Stream, StreamCapture
from ember.kernels.quant_gemm import (
    GemmPlan,
    GemmTile,
    QuantGemm,
    split_count,
)
from ember.kernels.quant_gemv import QuantType
from ember.kernels.synthetic import Synthetic


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    quant: QuantType
    n: int
    k: int


SHAPES = {
    "8b": [
        Shape("8B qkv", QuantType.Q4_0, 6144, 4096),
        Shape("8B wo", QuantType.Q4_0, 4096, 4096),
        Shape("8B gate_up", QuantType.Q4_0, 28672, 4096),
        Shape("8B down", QuantType.Q4_0, 4096, 14336),
    ],
    "135m": [
        Shape("135M qkv", QuantType.Q4_1, 960, 576),
        Shape("135M wo", QuantType.Q4_1, 576, 576),
        Shape("135M gate_up", QuantType.Q4_1, 3072, 576),
        Shape("135M down", QuantType.Q4_1, 576, 1536),
    ],
    "8b-k": [
        Shape("8B qkv", QuantType.Q4_K, 6144, 4096),
        Shape("8B wo", QuantType.Q4_K, 4096, 4096),
        Shape("8B gate_up", QuantType.Q4_K, 28672, 4096),
        Shape("8B down", QuantType.Q6_K, 4096, 14336),
    ],
}
LAYERS = {"8b": 32, "135m": 30, "8b-k": 32}
FIELDS = ("first", "plan", "unsplit", "best")
ROWS = (16, 32, 64, 128, 256, 512)
ROTATE_BYTES = 128 << 20
MAX_COPIES = 64
MIN_LAUNCHES = 8
REPLAYS = 3
WORKSPACE_BYTES = 64 << 20
REFERENCE_TILE = GemmTile.M64


class Bench:
    """The device, kernels and buffers of one run."""

    def __init__(self, device: Device, stream: Stream) -> None:
        self.device = device
        self.stream = stream
        self.gemm = QuantGemm.load(device)
        self.synthetic = Synthetic.load(device)
        self.workspace = DeviceArray.empty((WORKSPACE_BYTES,), np.uint8)
        self.workspace.buffer.memset_d32(0, stream)

    def close(self) -> None:
        self.workspace.free()
        self.synthetic.unload()
        self.gemm.unload()

    def time(
        self,
        weights: list[DeviceArray],
        shape: Shape,
        x: DeviceArray,
        y: DeviceArray,
        plan: GemmPlan,
    ) -> float:
        """Microseconds per launch of `plan`, the best of REPLAYS graph replays."""
        launches = [
            self.gemm.gemm_launch(w, shape.quant, x, y, plan.tile, self.workspace, plan.splits)
            for w in weights
        ]
        count = -(-MIN_LAUNCHES // len(launches)) * len(launches)
        with StreamCapture(self.stream) as capture:
            for i in range(count):
                launches[i % len(launches)](self.stream)
        graph = capture.graph.instantiate()
        capture.graph.destroy()
        best = float("inf")
        with Event.create() as start, Event.create() as end:
            for replay in range(REPLAYS + 1):
                start.record(self.stream)
                graph.launch(self.stream)
                end.record(self.stream)
                end.synchronize()
                if replay:  # the first replay warms up
                    best = min(best, start.elapsed_ms(end) * 1e3 / count)
        graph.destroy()
        return best

    def result(
        self, weight: DeviceArray, shape: Shape, x: DeviceArray, y: DeviceArray, plan: GemmPlan
    ) -> npt.NDArray[np.float32]:
        y.buffer.memset_d32(0xFFFFFFFF, self.stream)
        self.gemm.gemm_launch(weight, shape.quant, x, y, plan.tile, self.workspace, plan.splits)(
            self.stream
        )
        self.stream.synchronize()
        return y.to_numpy()


def tiles_for(m: int) -> list[GemmTile]:
    return [t for t in GemmTile if m <= 8 * t.rows and t.rows <= 2 * max(m, 16)]


def name(plan: GemmPlan) -> str:
    return f"{plan.tile.name}/{plan.splits}"


def cell(plan: GemmPlan, us: float, wrong: bool) -> str:
    split = f"/{plan.splits}" if plan.splits > 1 else ""
    return f"{us:.1f}{split}{'!' if wrong else ''}"


class Case:
    """One (shape, M): its operands, a reference result and the plans timed so far."""

    def __init__(
        self, bench: Bench, shape: Shape, weights: list[DeviceArray], x: DeviceArray, y: DeviceArray
    ) -> None:
        self.bench, self.shape, self.weights, self.x, self.y = bench, shape, weights, x, y
        self.reference = bench.result(weights[0], shape, x, y, GemmPlan(REFERENCE_TILE))
        self.limit = 1e-3 * float(np.abs(self.reference).max())
        self.measured: dict[GemmPlan, tuple[float, bool]] = {}

    def measure(self, plan: GemmPlan) -> tuple[float, bool]:
        """(µs per launch, whether the result is wrong) of `plan`."""
        if plan not in self.measured:
            got = self.bench.result(self.weights[0], self.shape, self.x, self.y, plan)
            wrong = not float(np.abs(got - self.reference).max()) <= self.limit
            us = self.bench.time(self.weights, self.shape, self.x, self.y, plan)
            self.measured[plan] = (us, wrong)
        return self.measured[plan]

    def best(self) -> GemmPlan:
        return min(self.measured, key=lambda p: self.measured[p][0])


def first_tile(m: int, n: int, multiprocessors: int) -> GemmTile:
    """The tile the first quant_gemm picked (always unsplit), to compare against."""
    if m <= 16:
        return GemmTile.M16
    if m <= 32:
        return GemmTile.M32
    if m <= 64 or GemmTile.M128.tiles(m, n) < multiprocessors:
        return GemmTile.M64
    return GemmTile.M128


@dataclass(frozen=True, slots=True)
class Totals:
    """µs of one (shape, M): the plan, the fastest measured, the plan without a workspace and
    the first quant_gemm's choice."""

    plan: float
    best: float
    unsplit: float
    first: float


def bench_shape(bench: Bench, shape: Shape, rows: list[int]) -> dict[int, Totals]:
    gemm, stream, sms = bench.gemm, bench.stream, bench.gemm.multiprocessors
    n, k = shape.n, shape.k
    row_bytes = shape.quant.row_bytes(k)
    w_bytes = n * row_bytes
    copies = max(2, min(MAX_COPIES, -(-ROTATE_BYTES // w_bytes)))
    where = "HBM" if copies * w_bytes > 2 * bench.device.l2_cache_bytes else "L2"
    print(f"{shape.name}: {n}x{k} {shape.quant.name}, W {w_bytes / 1e6:.1f} MB from {where}")
    weights = [DeviceArray.empty((n, row_bytes), np.uint8) for _ in range(copies)]
    top = max(rows)
    x_all = DeviceArray.empty((top * k,), np.float32)
    y_all = DeviceArray.empty((top * n,), np.float32)
    totals: dict[int, Totals] = {}
    try:
        for i, w in enumerate(weights):
            bench.synthetic.fill_quant(w, shape.quant, 1000 + i, 0.01, stream)
        bench.synthetic.fill_f32(x_all, 7, -1.0, 1.0, stream)
        for m in rows:
            case = Case(
                bench,
                shape,
                weights,
                x_all.view((m, k), np.float32),
                y_all.view((m, n), np.float32),
            )
            cells = []
            residency = gemm.type_residency[shape.quant]
            for tile in GemmTile:
                if tile not in tiles_for(m) or tile not in residency:
                    cells.append("-")
                    continue
                splits = split_count(tile, m, n, k, sms, residency[tile])
                options = [GemmPlan(tile, s) for s in sorted({1, max(1, splits // 2), splits})]
                plan = min(options, key=lambda p: case.measure(p)[0])
                cells.append(cell(plan, *case.measure(plan)))
            chosen = gemm.plan(m, n, k, quant=shape.quant)
            us, wrong = case.measure(chosen)
            unsplit = gemm.plan(m, n, k, split=False, quant=shape.quant)
            unsplit_us = case.measure(unsplit)[0]
            first_us = case.measure(GemmPlan(first_tile(m, n, sms)))[0]
            best = case.best()
            totals[m] = Totals(us, case.measured[best][0], unsplit_us, first_us)
            print(
                f"{shape.name:<12}{m:>4} | {name(chosen):<8}{us:>7.1f}{'!' if wrong else ' '}"
                f"{w_bytes / us / 1e6:>5.2f}{2 * m * n * k / us / 1e6:>6.0f} | "
                f"{name(best):<8}{case.measured[best][0]:>7.1f} | "
                f"{unsplit.tile.name:<5}{unsplit_us:>7.1f} |" + "".join(f"{c:>8}" for c in cells),
                flush=True,
            )
    finally:
        for w in weights:
            w.free()
        x_all.free()
        y_all.free()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(map(str, ROWS)))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    device = Device.get(0)
    context = device.retain_primary_context()
    context.make_current()
    with Stream.create() as stream:
        bench = Bench(device, stream)
        print(
            f"{device.name}, {device.multiprocessor_count} SMs, L2 {device.l2_cache_bytes >> 20}"
            " MB; µs per launch; plan = tile/splits; cells: best of unsplit and the tile's own "
            "split (µs/splits); ! = wrong result"
        )
        residency = " ".join(f"{t.name}:{n}" for t, n in bench.gemm.residency.items())
        print(f"blocks per SM: {residency}")
        print(
            f"{'shape':<12}{'M':>4} | {'plan':<8}{'µs':>7} {'TB/s':>5}{'TF/s':>6} | "
            f"{'best':<8}{'µs':>7} | {'no ws':<5}{'µs':>7} |"
            + "".join(f"{t.name:>8}" for t in GemmTile)
        )
        groups: dict[str, list[dict[int, Totals]]] = {}
        try:
            for group in args.shapes.split(","):
                groups[group] = [bench_shape(bench, shape, rows) for shape in SHAPES[group]]
        finally:
            bench.close()
    context.release()
    print(
        "\nper forward step, 4 projections x layers (8b, 8b-k: 32, 135m: 30), ms: "
        "first quant_gemm / plan / plan without workspace / best measured"
    )
    for group, shapes in groups.items():
        for m in rows:
            sums = [LAYERS[group] * sum(getattr(t[m], f) for t in shapes) / 1e3 for f in FIELDS]
            print(f"{group:>5} M {m:>4}: " + " / ".join(f"{v:.2f}" for v in sums))


if __name__ == "__main__":
    main()
