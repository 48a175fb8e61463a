"""The paged NumPy forward pass against a dense reference, on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

from ember.model.forward_batch import ForwardBatch
from ember.model.numpy_llama import NumpyLlama

from .tiny_llama import TINY, dense_logits, tiny_weights

BLOCK = 4


class PagedSeq:
    """A sequence laid over deliberately scattered blocks of the pool."""

    def __init__(self, tokens: list[int], blocks: list[int]) -> None:
        self.tokens = tokens
        self.blocks = blocks
        self.done = 0

    def chunk(self, n: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        pos = np.arange(self.done, self.done + n, dtype=np.int32)
        table = np.asarray(self.blocks, np.int32)
        return (
            self.tokens[self.done : self.done + n],
            pos,
            table[pos // BLOCK] * BLOCK + pos % BLOCK,
        )


def make_batch(work: list[tuple[PagedSeq, int]], all_logits: bool = False) -> ForwardBatch:
    tokens: list[int] = []
    positions, slots, starts, ctx = [], [], [0], []
    width = max(len(s.blocks) for s, _ in work)
    tables = np.full((len(work), width), -1, np.int32)
    logits_rows: list[int] = []
    for row, (seq, n) in enumerate(work):
        t, p, sl = seq.chunk(n)
        tokens += t
        positions.append(p)
        slots.append(sl)
        tables[row, : len(seq.blocks)] = seq.blocks
        if all_logits:
            logits_rows += list(range(starts[-1], starts[-1] + n))
        else:
            logits_rows.append(starts[-1] + n - 1)
        starts.append(starts[-1] + n)
        ctx.append(seq.done + n)
        seq.done += n
    return ForwardBatch(
        token_ids=np.asarray(tokens, np.int32),
        positions=np.concatenate(positions),
        slot_mapping=np.concatenate(slots).astype(np.int32),
        query_starts=np.asarray(starts, np.int32),
        context_lens=np.asarray(ctx, np.int32),
        block_tables=tables,
        logits_indices=np.asarray(logits_rows, np.int32),
    )


@pytest.fixture()
def model() -> NumpyLlama:
    m = NumpyLlama(TINY, tiny_weights(seed=1))
    m.allocate_kv_cache(num_blocks=64, block_size=BLOCK)
    return m


def test_prefill_matches_dense_reference_at_every_position(model: NumpyLlama) -> None:
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, TINY.vocab_size, 19).tolist()
    seq = PagedSeq(tokens, blocks=[9, 3, 40, 7, 22])
    logits = model.forward(make_batch([(seq, len(tokens))], all_logits=True))
    np.testing.assert_allclose(logits, dense_logits(model.weights, tokens), rtol=1e-4, atol=1e-4)


def test_chunked_prefill_and_decode_match_dense(model: NumpyLlama) -> None:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, TINY.vocab_size, 23).tolist()
    ref = dense_logits(model.weights, tokens)
    seq = PagedSeq(tokens, blocks=[5, 60, 2, 33, 11, 17])
    got = []
    for n in (7, 5, 1, 6, 1, 1, 1, 1):  # chunks, then single-token decode steps
        got.append(model.forward(make_batch([(seq, n)]))[0])
    ends = np.cumsum([7, 5, 1, 6, 1, 1, 1, 1]) - 1
    np.testing.assert_allclose(np.stack(got), ref[ends], rtol=1e-4, atol=1e-4)


def test_mixed_batch_of_prefills_and_decodes_matches_each_alone(model: NumpyLlama) -> None:
    rng = np.random.default_rng(4)
    lengths = [9, 14, 3, 17]
    seqs = [
        PagedSeq(
            rng.integers(0, TINY.vocab_size, n + 2).tolist(), blocks=list(range(6 * i, 6 * i + 6))
        )
        for i, n in enumerate(lengths)
    ]
    refs = [dense_logits(model.weights, s.tokens) for s in seqs]
    # Step 1: first two prefill fully, the others partly; step 2: decodes mixed with the rest.
    out1 = model.forward(make_batch([(seqs[0], 9), (seqs[1], 14), (seqs[2], 2), (seqs[3], 10)]))
    out2 = model.forward(make_batch([(seqs[0], 1), (seqs[1], 1), (seqs[2], 1), (seqs[3], 7)]))
    np.testing.assert_allclose(out1[0], refs[0][8], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out1[1], refs[1][13], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out2[0], refs[0][9], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out2[2], refs[2][2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out2[3], refs[3][16], rtol=1e-4, atol=1e-4)


def test_shared_prefix_blocks_are_read_not_recomputed(model: NumpyLlama) -> None:
    rng = np.random.default_rng(5)
    prefix = rng.integers(0, TINY.vocab_size, 8).tolist()  # two full blocks
    a = PagedSeq(prefix + [1, 2, 3], blocks=[10, 11, 12])
    model.forward(make_batch([(a, 11)]))
    tail = [4, 5, 6, 7]
    b = PagedSeq(prefix + tail, blocks=[10, 11, 13])
    b.done = 8  # the first two blocks come from `a`'s cache
    logits = model.forward(make_batch([(b, 4)]))
    np.testing.assert_allclose(
        logits[0], dense_logits(model.weights, prefix + tail)[-1], rtol=1e-4, atol=1e-4
    )
