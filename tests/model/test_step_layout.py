"""How a step's inputs are laid out and padded for the CUDA backend's captured graphs (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from ember.kernels.attention import MAX_SPLITS, choose_splits, partials_size
from ember.kernels.sampling import ROW_PARAMS_DTYPE
from ember.model.backend import SamplingBatch
from ember.model.cuda.llama import buckets
from ember.model.cuda.step_inputs import StepLayout
from ember.model.forward_batch import ForwardBatch


def mixed_batch() -> ForwardBatch:
    """A 3-token prefill chunk of sequence 0 (positions 5..7) and one decode token of seq 1."""
    return ForwardBatch(
        token_ids=np.array([11, 12, 13, 99], np.int32),
        positions=np.array([5, 6, 7, 40], np.int32),
        slot_mapping=np.array([21, 22, 23, 72], np.int32),
        query_starts=np.array([0, 3, 4], np.int32),
        context_lens=np.array([8, 41], np.int32),
        block_tables=np.array([[4, 1, -1], [9, 3, 4]], np.int32),
        logits_indices=np.array([2, 3], np.int32),
    )


def test_fill_pads_tokens_rows_and_params_to_the_bucket() -> None:
    layout = StepLayout(max_tokens=16, max_rows=8, max_seqs=4, table_width=6)
    words = np.full(layout.total, 12345, np.int32)  # stale values from an earlier step
    sampling = SamplingBatch(
        temperature=np.array([0.0, 0.8], np.float32),
        top_k=np.array([0, 40], np.int32),
        top_p=np.array([1.0, 0.9], np.float32),
        min_p=np.array([0.0, 0.05], np.float32),
        seeds=np.array([7, 2**40 + 3], np.uint64),
        steps=np.array([0, 12], np.int32),
        host_rows=np.array([], np.int32),
    )
    used = layout.fill(words, mixed_batch(), sampling, tokens=8, rows=4)
    t = slice(0, 8)
    assert words[layout.tokens :][t].tolist() == [11, 12, 13, 99, -1, -1, -1, -1]
    assert words[layout.positions :][t].tolist() == [5, 6, 7, 40, -1, -1, -1, -1]
    assert words[layout.slots :][t].tolist() == [21, 22, 23, 72, -1, -1, -1, -1]
    assert words[layout.token_seq :][t].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert words[layout.rows : layout.rows + 4].tolist() == [2, 3, 0, 0]
    params = words[layout.params : layout.tables].view(ROW_PARAMS_DTYPE)
    assert params["temperature"][:4].tolist() == pytest.approx([0.0, 0.8, 0.0, 0.0])
    assert params["top_k"][:4].tolist() == [0, 40, 0, 0]
    assert params["seed_lo"][1] == 3 and params["seed_hi"][1] == 2**8
    assert params["step"][:2].tolist() == [0, 12]
    tables = words[layout.tables :].reshape(4, 6)
    assert tables[0, :3].tolist() == [4, 1, -1] and tables[1, :3].tolist() == [9, 3, 4]
    assert used == layout.tables + 2 * 6  # only the tables of the batch's sequences travel


def test_fill_rejects_a_batch_larger_than_its_bucket() -> None:
    layout = StepLayout(max_tokens=16, max_rows=8, max_seqs=4, table_width=2)
    words = np.zeros(layout.total, np.int32)
    with pytest.raises(ValueError, match="does not fit"):
        layout.fill(words, mixed_batch(), None, tokens=2, rows=4)
    with pytest.raises(ValueError, match="block tables"):
        layout.fill(words, mixed_batch(), None, tokens=8, rows=4)


def test_buckets_cover_every_size_up_to_the_limit() -> None:
    assert buckets(1) == [1]
    assert buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert buckets(1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024]
    assert buckets(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    sizes = buckets(1000)
    assert all(any(b >= n for b in sizes) for n in range(1, 1001)) and sizes[-1] == 1000


def test_attention_splits_fill_the_gpu_only_for_small_batches() -> None:
    assert choose_splits(1, 3, 132, 8192) == MAX_SPLITS
    assert choose_splits(256, 3, 132, 8192) == 1
    assert choose_splits(1, 8, 132, 100) == 1  # too few keys to be worth splitting
    assert partials_size(4, 9, 64, 1) == 0
    assert partials_size(4, 9, 64, 8) == 4 * 9 * 8 * 66
