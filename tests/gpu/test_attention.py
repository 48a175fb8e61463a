"""ember.kernels.attention against a NumPy causal GQA attention over the same paged fp16 cache."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ember.gpu import DeviceArray, Stream
from ember.kernels.attention import Attention, counters_size, partials_size

pytestmark = pytest.mark.gpu


def reference(
    qkv: npt.NDArray[np.float32],
    k_cache: npt.NDArray[np.float16],
    v_cache: npt.NDArray[np.float16],
    positions: npt.NDArray[np.int32],
    token_seq: npt.NDArray[np.int32],
    tables: npt.NDArray[np.int32],
    q_heads: int,
    block: int,
    window: int | None = None,
) -> npt.NDArray[np.float32]:
    """Each token over keys 0..pos of its sequence, or the last `window` of them."""
    _, kv_heads, hd = k_cache.shape
    group = q_heads // kv_heads
    out = np.zeros((qkv.shape[0], q_heads * hd), np.float64)
    for t, pos in enumerate(positions):
        if pos < 0:
            continue
        keys = np.arange(0 if window is None else max(0, pos + 1 - window), pos + 1)
        slots = tables[token_seq[t], keys // block] * block + keys % block
        for h in range(q_heads):
            q = qkv[t, h * hd : (h + 1) * hd].astype(np.float64)
            k = k_cache[slots, h // group].astype(np.float64)
            v = v_cache[slots, h // group].astype(np.float64)
            s = k @ q / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h * hd : (h + 1) * hd] = p @ v / p.sum()
    return out.astype(np.float32)


@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim", "lengths", "splits"),
    [
        (9, 3, 64, [1, 17, 300], 1),  # SmolLM heads, decode-like rows
        (9, 3, 64, [700], 8),  # one long sequence split over the context
        (32, 8, 128, [5, 129], 1),  # Llama 8B heads
        (32, 8, 128, [1000, 3], 4),
        (4, 4, 64, [40], 2),  # no grouping
        # Each token uses only the splits its keys need (256 keys each): 1, 1, 2 and all 32.
        (9, 3, 64, [1, 40, 300, 9000], 32),
        (16, 2, 64, [255, 256, 257, 512, 513, 769], 3),  # per-token split count boundaries
        (24, 3, 64, [100, 255, 1100], 1),  # G = 8, several tiles of 256 keys in one block
        (32, 4, 128, [300, 257], 2),
    ],
)
def test_decode_rows_match_numpy(
    attention: Attention,
    stream: Stream,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    lengths: list[int],
    splits: int,
) -> None:
    check_decode_rows(attention, stream, q_heads, kv_heads, head_dim, lengths, splits)


@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim", "lengths", "splits", "window"),
    [
        (14, 2, 64, [1, 90, 700], 1, None),  # Qwen2.5 0.5B: G = 7
        (28, 4, 128, [300, 1000], 4, None),  # Qwen2.5 7B: G = 7
        (40, 8, 128, [5, 600], 2, None),  # Qwen2.5 14B: G = 5
        # Mistral's sliding window: contexts shorter than, equal to and past the window, split
        # and unsplit (a window of 300 keys takes 2 splits of 256).
        (32, 8, 128, [3, 300, 301, 1000], 1, 300),
        (32, 8, 128, [3, 300, 301, 1000, 4000], 8, 300),
        (9, 3, 64, [1, 5, 6, 40], 1, 5),
        (9, 3, 64, [2000, 700], 32, 4096),  # a window longer than every context
    ],
)
def test_qwen_groups_and_sliding_windows_match_numpy(
    attention: Attention,
    stream: Stream,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    lengths: list[int],
    splits: int,
    window: int | None,
) -> None:
    check_decode_rows(attention, stream, q_heads, kv_heads, head_dim, lengths, splits, window)


def check_decode_rows(
    attention: Attention,
    stream: Stream,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    lengths: list[int],
    splits: int,
    window: int | None = None,
) -> None:
    block = 16
    rng = np.random.default_rng(sum(lengths) + head_dim)
    seqs = len(lengths)
    width = max(-(-n // block) for n in lengths)
    num_blocks = seqs * width + 3
    # Each sequence's blocks are a random, non-contiguous choice of the pool.
    tables = rng.permutation(num_blocks)[: seqs * width].reshape(seqs, width).astype(np.int32)
    cache_shape = (num_blocks * block, kv_heads, head_dim)
    k_cache = rng.standard_normal(cache_shape).astype(np.float16)
    v_cache = rng.standard_normal(cache_shape).astype(np.float16)
    # One decode row per sequence at its last position, plus a padded row (position -1).
    positions = np.array([n - 1 for n in lengths] + [-1], np.int32)
    token_seq = np.array(list(range(seqs)) + [0], np.int32)
    tokens = len(positions)
    qkv = rng.standard_normal((tokens, (q_heads + 2 * kv_heads) * head_dim)).astype(np.float32)
    want = reference(qkv, k_cache, v_cache, positions, token_seq, tables, q_heads, block, window)
    scratch = max(partials_size(tokens, q_heads, head_dim, splits), 1)
    arrays = [qkv, k_cache, v_cache, positions, token_seq, tables]
    devs = [DeviceArray.from_numpy(a) for a in arrays]
    out = DeviceArray.empty((tokens, q_heads * head_dim), np.float32)
    partials = DeviceArray.empty((scratch,), np.float32)
    counters = DeviceArray.empty((counters_size(tokens, kv_heads),), np.int32)
    launch = attention.attention_launch(
        *devs, out, block, splits, partials, counters, window=window
    )
    try:
        counters.buffer.memset_d32(0)
        partials.buffer.memset_d32(0x7FC00000)  # NaN: only what a split wrote may be read
        for _ in range(2):  # the second launch relies on the first leaving the counters zero
            out.buffer.memset_d32(0x7FC00000)  # NaN: every element must be written
            launch(stream)
            stream.synchronize()
            got = out.to_numpy()
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
            assert not got[-1].any()
        assert not counters.to_numpy().any()
    finally:
        for d in (*devs, out, partials, counters):
            d.free()


@pytest.mark.parametrize("window", [None, 7, 40], ids=["causal", "window-7", "window-40"])
def test_prefill_chunk_after_cached_prefix_matches_numpy(
    attention: Attention, stream: Stream, window: int | None
) -> None:
    """A chunk of tokens 40..71 of a sequence whose first 40 keys were cached earlier, next to
    a second sequence's chunk: each token sees exactly its causal prefix (or, with a sliding
    window, the last `window` keys of it)."""
    q_heads, kv_heads, hd, block = 9, 3, 64, 16
    rng = np.random.default_rng(7)
    tables = np.array([[5, 2, 7, 0, 3], [1, 4, 6, -1, -1]], np.int32)
    cache_shape = (8 * block, kv_heads, hd)
    k_cache = rng.standard_normal(cache_shape).astype(np.float16)
    v_cache = rng.standard_normal(cache_shape).astype(np.float16)
    positions = np.concatenate([np.arange(40, 72), np.arange(0, 45)]).astype(np.int32)
    token_seq = np.array([0] * 32 + [1] * 45, np.int32)
    qkv = rng.standard_normal((len(positions), (q_heads + 2 * kv_heads) * hd)).astype(np.float32)
    want = reference(qkv, k_cache, v_cache, positions, token_seq, tables, q_heads, block, window)
    arrays = [qkv, k_cache, v_cache, positions, token_seq, tables]
    devs = [DeviceArray.from_numpy(a) for a in arrays]
    out = DeviceArray.empty((len(positions), q_heads * hd), np.float32)
    try:
        attention.attention_launch(*devs, out, block, window=window)(stream)
        stream.synchronize()
        got = out.to_numpy()
    finally:
        for d in (*devs, out):
            d.free()
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(
    ("q_heads", "kv_heads", "head_dim"),
    [
        (9, 3, 64),
        (32, 8, 64),
        (32, 8, 128),
        (16, 8, 128),
        (8, 8, 128),
        (24, 3, 64),
        (4, 4, 64),
        (14, 2, 64),
        (16, 8, 64),
    ],
    ids=["smollm2", "llama-1b", "llama-8b", "g2", "g1", "g8", "g1-hd64", "qwen2.5-0.5b", "g2-hd64"],
)
def test_rows_kernel_gives_the_attention_kernels_bits(
    attention: Attention, stream: Stream, q_heads: int, kv_heads: int, head_dim: int
) -> None:
    """Every token, whichever block it shares and with whom: a 600-token prefill from key 0
    (tiles of 256 past their rows' ends), a chunk after a cached prefix, decode rows of other
    sequences between them, a one-token chunk and padded rows, so that blocks straddle
    sequences at every offset. The rows kernel's output is the unsplit kernel's, bit for bit
    (which the tests above check against NumPy), for every block size it offers."""
    block = 16
    rng = np.random.default_rng(head_dim + q_heads)
    lengths = [600, 72, 300, 5, 1000]  # tokens each sequence has in the cache
    width = max(-(-n // block) for n in lengths)
    num_blocks = len(lengths) * width + 2
    tables = rng.permutation(num_blocks)[: len(lengths) * width]
    tables = tables.reshape(len(lengths), width).astype(np.int32)
    cache_shape = (num_blocks * block, kv_heads, head_dim)
    k_cache = rng.standard_normal(cache_shape).astype(np.float16)
    v_cache = rng.standard_normal(cache_shape).astype(np.float16)
    rows = [(0, p) for p in range(600)]  # a whole prefill
    rows.insert(37, (2, 299))  # a decode row inside it
    rows.insert(101, (0, -1))  # padding as the engine writes it: sequence 0, position -1
    rows += [(1, p) for p in range(40, 72)]  # a chunk after 40 cached keys
    rows += [(3, 4), (0, -1), (4, 999), (2, -1)]  # a one-token chunk, decode, padding
    positions = np.array([p for _, p in rows], np.int32)
    token_seq = np.array([s for s, _ in rows], np.int32)
    tokens = len(rows)
    qkv = rng.standard_normal((tokens, (q_heads + 2 * kv_heads) * head_dim)).astype(np.float32)
    arrays = [qkv, k_cache, v_cache, positions, token_seq, tables]
    devs = [DeviceArray.from_numpy(a) for a in arrays]
    out = DeviceArray.empty((tokens, q_heads * head_dim), np.float32)
    try:
        attention.attention_launch(*devs, out, block)(stream)
        stream.synchronize()
        want = out.to_numpy()
        offered = attention.rows_per_block(head_dim, q_heads // kv_heads)
        assert offered, "every model shape we run has a rows kernel"
        for rows_per_block in offered:
            out.buffer.memset_d32(0x7FC00000)  # NaN: every element must be written
            attention.rows_launch(*devs, out, block, rows_per_block)(stream)
            stream.synchronize()
            got = out.to_numpy()
            assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), (
                f"{rows_per_block} tokens a block: "
                f"{np.flatnonzero((got != want).any(axis=1)).tolist()[:10]} differ"
            )
    finally:
        for d in (*devs, out):
            d.free()
