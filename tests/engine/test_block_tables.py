"""The persistent block-table array: rows follow the sequences' lists, padded with -1."""

from __future__ import annotations

import numpy as np

from ember.engine.block_tables import BlockTables
from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.sequence import Sequence

from .helpers import make_seq


def test_rows_are_reused_after_release_and_padded_with_minus_one() -> None:
    tables = BlockTables(rows=2, width=2)
    a = tables.acquire([5, 6])
    b = tables.acquire([])
    tables.append(b, 9)
    assert tables.gather(np.array([a, b])).tolist() == [[5, 6], [9, -1]]
    tables.release(a)
    assert tables.array[a].tolist() == [-1, -1] and tables.num_rows_in_use == 1
    assert tables.acquire([1]) == a


def test_rows_and_columns_grow_keeping_their_contents() -> None:
    tables = BlockTables(rows=1, width=1)
    rows = [tables.acquire([r]) for r in range(5)]
    for block_id in range(10, 15):
        tables.append(rows[3], block_id)
    assert tables.array.shape[0] >= 5
    gathered = tables.gather(np.array(rows[2:4]))
    assert gathered.tolist() == [[2, -1, -1, -1, -1, -1], [3, 10, 11, 12, 13, 14]]
    assert tables.acquire(list(range(40))) == 5  # wider than the array at once


def test_pool_keeps_each_sequence_row_equal_to_its_list() -> None:
    rng = np.random.default_rng(0)
    pool = KVCachePool(num_blocks=64, block_size=4)
    live: list[Sequence] = []
    for step in range(200):
        if live and rng.random() < 0.3:
            seq = live.pop(int(rng.integers(len(live))))
            pool.free(seq)
            assert seq.table_row == -1
        elif rng.random() < 0.5:
            seq = make_seq(rng.integers(0, 50, int(rng.integers(1, 12))).tolist())
            if pool.try_allocate(seq):
                live.append(seq)
        elif live:
            seq = live[int(rng.integers(len(live)))]
            pool.ensure_capacity(seq, len(seq.block_table) * 4 + int(rng.integers(0, 9)))
        for seq in live:
            row = pool.tables.array[seq.table_row]
            assert row[: len(seq.block_table)].tolist() == seq.block_table, step
            assert (row[len(seq.block_table) :] == -1).all()
    assert pool.tables.num_rows_in_use == len(live)
