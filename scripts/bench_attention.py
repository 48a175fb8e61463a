#!/usr/bin/env python3
"""Time a prefill's attention: ember.kernels.attention's kernel of one token a block against its
rows kernels (`rows_launch`, several tokens of one sequence a block, the same bits).

    PYTHONPATH=src python3 scripts/bench_attention.py [--tokens 512,2048] [--sequences 1]

For each model shape, `--sequences` prompts of `--tokens` tokens each, prefilled whole from key
0 (as a step of the engine lays them out: one sequence's tokens after another's), with random
fp16 caches. Each timing replays a CUDA graph of LAUNCHES launches, the best of REPLAYS; the
caches (a few MB) stay in L2, as a layer's do during prefill. Prints µs a launch and the
speed-up over the one-token kernel, checking first that every rows kernel gives its bits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ember.gpu import Device, DeviceArray, Event, Stream, StreamCapture
from ember.gpu.launch import Launch
from ember.kernels.attention import Attention

# name: (q heads, kv heads, head dim)
SHAPES = {
    "smollm2-135m": (9, 3, 64),
    "llama-1b": (32, 8, 64),
    "llama-8b": (32, 8, 128),
}
BLOCK = 16
LAUNCHES = 20
REPLAYS = 10


def time_launch(launch: Launch, stream: Stream) -> float:
    """Seconds a launch, the best of REPLAYS replays of a graph of LAUNCHES of it."""
    with StreamCapture(stream) as capture:
        for _ in range(LAUNCHES):
            launch(stream)
    graph = capture.graph.instantiate()
    graph.launch(stream)
    stream.synchronize()
    best = float("inf")
    with Event.create() as start, Event.create() as end:
        for _ in range(REPLAYS):
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            best = min(best, start.elapsed_ms(end) / 1e3 / LAUNCHES)
    graph.destroy()
    capture.graph.destroy()
    return best


def bench_shape(
    attention: Attention, stream: Stream, shape: tuple[int, int, int], tokens: int, seqs: int
) -> list[tuple[str, float]]:
    q_heads, kv_heads, hd = shape
    rng = np.random.default_rng(0)
    width = -(-tokens // BLOCK)
    tables = np.arange(seqs * width, dtype=np.int32).reshape(seqs, width)
    cache_shape = (seqs * width * BLOCK, kv_heads, hd)
    k_cache = rng.standard_normal(cache_shape).astype(np.float16)
    v_cache = rng.standard_normal(cache_shape).astype(np.float16)
    positions = np.tile(np.arange(tokens, dtype=np.int32), seqs)
    token_seq = np.repeat(np.arange(seqs, dtype=np.int32), tokens)
    rows = len(positions)
    qkv = rng.standard_normal((rows, (q_heads + 2 * kv_heads) * hd)).astype(np.float32)
    devs = [DeviceArray.from_numpy(a) for a in (qkv, k_cache, v_cache, positions, token_seq)]
    devs.append(DeviceArray.from_numpy(tables))
    out = DeviceArray.empty((rows, q_heads * hd), np.float32)
    try:
        single = attention.attention_launch(*devs, out, BLOCK)
        single(stream)
        stream.synchronize()
        want = out.to_numpy()
        timings = [("one token a block", time_launch(single, stream))]
        for r in attention.rows_per_block(hd, q_heads // kv_heads):
            launch = attention.rows_launch(*devs, out, BLOCK, r)
            launch(stream)
            stream.synchronize()
            if out.to_numpy().tobytes() != want.tobytes():
                raise AssertionError(f"{r} tokens a block: not the one-token kernel's bits")
            timings.append((f"{r} tokens a block", time_launch(launch, stream)))
        return timings
    finally:
        for d in (*devs, out):
            d.free()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="512,2048", help="prompt tokens, comma-separated")
    parser.add_argument("--sequences", type=int, default=1)
    args = parser.parse_args()
    device = Device.get(0)
    context = device.retain_primary_context()
    context.make_current()
    attention = Attention.load(device)
    print("| shape | tokens | kernel | µs | speed-up |\n|---|---|---|---|---|")
    with Stream.create() as stream:
        for name, shape in SHAPES.items():
            for tokens in (int(t) for t in args.tokens.split(",")):
                timings = bench_shape(attention, stream, shape, tokens, args.sequences)
                base = timings[0][1]
                for kernel, seconds in timings:
                    print(
                        f"| {name} | {tokens} | {kernel} | {seconds * 1e6:.1f} "
                        f"| {base / seconds:.2f}x |",
                        flush=True,
                    )
    attention.unload()
    context.release()


if __name__ == "__main__":
    main()
