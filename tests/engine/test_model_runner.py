"""The runner's vectorised step inputs against a per-sequence construction of the same batch."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.model_runner import ModelRunner
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from ember.engine.sequence import FinishReason, Sequence
from ember.model.forward_batch import ForwardBatch

from .helpers import make_seq


class NoBackend:
    """prepare() never calls the backend."""


def reference_batch(batch: ScheduledBatch, bs: int) -> tuple[ForwardBatch, list[Sequence]]:
    token_ids: list[int] = []
    positions, slots = [], []
    query_starts, context_lens, logits_indices = [0], [], []
    sampling_seqs = []
    width = max(len(seq.block_table) for seq in batch.seqs)
    tables = np.full((len(batch.seqs), width), -1, np.int32)
    for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
        start = seq.num_computed_tokens
        token_ids.extend(seq.token_ids[start : start + n])
        pos = np.arange(start, start + n, dtype=np.int32)
        table = np.asarray(seq.block_table, np.int32)
        tables[row, : table.shape[0]] = table
        positions.append(pos)
        slots.append(table[pos // bs] * bs + pos % bs)
        query_starts.append(query_starts[-1] + n)
        context_lens.append(start + n)
        if start + n == seq.num_tokens:
            logits_indices.append(query_starts[-1] - 1)
            sampling_seqs.append(seq)

    def i32(values: list[int]) -> npt.NDArray[np.int32]:
        return np.asarray(values, np.int32)

    forward_batch = ForwardBatch(
        token_ids=i32(token_ids),
        positions=np.concatenate(positions),
        slot_mapping=np.concatenate(slots).astype(np.int32),
        query_starts=i32(query_starts),
        context_lens=i32(context_lens),
        block_tables=tables,
        logits_indices=i32(logits_indices),
    )
    return forward_batch, sampling_seqs


def test_prepare_matches_per_sequence_construction_through_a_busy_schedule() -> None:
    rng = np.random.default_rng(7)
    bs = 4
    pool = KVCachePool(num_blocks=40, block_size=bs)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=6, max_num_batched_tokens=24), pool)
    runner = ModelRunner(NoBackend(), bs, pool.tables)  # type: ignore[arg-type]
    shared = rng.integers(0, 100, 9).tolist()  # a common prefix, for prefix-cache hits
    kinds = set()
    for step in range(300):
        if rng.random() < 0.3:
            own = rng.integers(0, 100, int(rng.integers(1, 30))).tolist()
            prompt = shared + own if rng.random() < 0.5 else own
            scheduler.add(make_seq(prompt, SamplingParams(max_tokens=20)))
        batch = scheduler.schedule()
        if not batch.seqs:
            continue
        got, got_seqs = runner.prepare(batch)
        want, want_seqs = reference_batch(batch, bs)
        for name in ForwardBatch.__slots__:
            actual, expected = getattr(got, name), getattr(want, name)
            assert actual.dtype == np.int32, (step, name)
            np.testing.assert_array_equal(actual, expected, err_msg=f"step {step}: {name}")
        assert got_seqs == want_seqs
        kinds.add("decode" if got.num_tokens == got.num_seqs else "mixed")
        kinds.update("preempted" for _ in batch.preempted[:1])
        pool.mark_computed(batch.seqs, batch.num_new_tokens)
        for seq in got_seqs:
            seq.append_token(int(rng.integers(0, 100)))
            if seq.num_output_tokens >= 20 or rng.random() < 0.05:
                scheduler.finish(seq, FinishReason.LENGTH)
    assert kinds == {"decode", "mixed", "preempted"}
    assert pool.stats.hits > 0
