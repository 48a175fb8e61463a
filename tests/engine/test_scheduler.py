from __future__ import annotations

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.scheduler import Scheduler, SchedulerConfig
from ember.engine.sequence import FinishReason, SequenceStatus

from .helpers import make_seq


def advance(batch) -> None:  # type: ignore[no-untyped-def]
    """Pretend the runner computed the batch and sampled one token for finished prefills."""
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(7)


def test_chunked_prefill_respects_token_budget() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8), KVCachePool(64, 4))
    a, b = make_seq(list(range(20))), make_seq(list(range(5)))
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and batch.num_new_tokens == [8]
    advance(batch)
    # Half the budget is kept for the waiting b's first chunk.
    batch = sched.schedule()
    assert batch.seqs == [a, b] and batch.num_new_tokens == [4, 4]
    advance(batch)
    batch = sched.schedule()  # nobody waits: a's last 8 prompt tokens fill the budget
    assert batch.seqs == [a] and batch.num_new_tokens == [8]
    advance(batch)
    batch = sched.schedule()  # a's first decode, b's last prompt token
    assert batch.seqs == [a, b] and batch.num_new_tokens == [1, 1]


def test_admission_waits_for_blocks() -> None:
    sched = Scheduler(SchedulerConfig(), KVCachePool(4, 4))
    a, b = make_seq(list(range(12))), make_seq(list(range(8)))
    sched.add(a)
    sched.add(b)
    assert sched.schedule().seqs == [a]
    assert b.status is SequenceStatus.WAITING
    sched.finish(a, FinishReason.STOP)
    assert sched.schedule().seqs == [b]


def test_max_num_seqs() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=2), KVCachePool(64, 4))
    seqs = [make_seq([1, 2, 3]) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    assert sched.schedule().seqs == seqs[:2]


def test_newest_sequence_is_preempted_when_blocks_run_out() -> None:
    sched = Scheduler(SchedulerConfig(), KVCachePool(4, 4))
    old, new = make_seq([1, 2, 3, 4, 5, 6, 7, 8]), make_seq([9] * 8)
    sched.add(old)
    sched.add(new)
    advance(sched.schedule())  # both prefilled: 2 blocks each, pool full
    batch = sched.schedule()  # old needs a third block for its 9th token
    assert batch.seqs == [old]
    assert batch.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert new.block_table == [] and new.num_tokens == 9  # keeps its sampled token
    assert sched.waiting[0] is new and sched.num_preemptions == 1


def test_abort_waiting_and_running() -> None:
    pool = KVCachePool(8, 4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=1), pool)
    a, b = make_seq([1, 2, 3]), make_seq([4, 5, 6])
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b, FinishReason.ABORT)
    sched.finish(a, FinishReason.ABORT)
    assert sched.num_unfinished == 0 and pool.num_used_blocks == 0


def test_prefill_budget_caps_prompt_tokens_but_not_decodes() -> None:
    config = SchedulerConfig(max_num_batched_tokens=64, max_prefill_tokens=8)
    sched = Scheduler(config, KVCachePool(64, 4))
    decoding = [make_seq([1, 2]) for _ in range(10)]
    for seq in decoding:
        sched.add(seq)
    while sched.waiting:  # prefilled 8 prompt tokens a step: 4 sequences
        advance(sched.schedule())
    long = make_seq(list(range(30)))
    sched.add(long)
    batch = sched.schedule()
    # Ten decodes (their prefill done) and 8 of the long prompt's tokens.
    assert batch.num_new_tokens == [1] * 10 + [8] and batch.seqs[-1] is long


def test_a_long_prefill_lets_a_new_request_in_at_the_next_step() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=16), KVCachePool(64, 4))
    long = make_seq(list(range(100)))
    sched.add(long)
    advance(sched.schedule())
    short = make_seq([5, 6, 7])
    sched.add(short)
    batch = sched.schedule()
    assert batch.seqs == [long, short] and batch.num_new_tokens == [13, 3]
    advance(batch)
    assert short.num_tokens == 4  # its first token, one step after it arrived
    # The long prompt never gets less than half the budget while others arrive.
    for _ in range(5):
        sched.add(make_seq([1] * 40))
        batch = sched.schedule()
        assert batch.num_new_tokens[0] >= 8 and batch.seqs[0] is long
        advance(batch)
