from __future__ import annotations

import numpy as np
import pytest

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from ember.engine.scheduling import Scheduling
from ember.engine.sequence import FinishReason, SequenceStatus

from .fcfs_scheduler import FcfsScheduler
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


# Service classes: priority, fair share between tenants, preemption for priority, ageing.

INTERACTIVE, STANDARD, BATCH = (Scheduling(priority=p) for p in (0, 1, 2))


KINDS = ("preempted", "admitted")


def step(sched: Scheduler) -> ScheduledBatch:
    """Schedule, advance, and retire the sequences that reached their max_tokens."""
    batch = sched.schedule()
    advance(batch)
    for seq in batch.seqs:
        if seq.num_output_tokens >= seq.params.max_tokens:
            sched.finish(seq, FinishReason.LENGTH)
    return batch


def test_admission_by_priority_then_arrival() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1), KVCachePool(64, 4))
    one = SamplingParams(max_tokens=1)
    seqs = [make_seq([1, 2], one, scheduling=s) for s in (BATCH, STANDARD, INTERACTIVE)]
    seqs += [make_seq([3, 4], one, scheduling=INTERACTIVE), make_seq([5], one)]
    for seq in seqs:
        sched.add(seq)
    order = [step(sched).admitted[0] for _ in seqs]
    assert order == [seqs[2], seqs[3], seqs[4], seqs[1], seqs[0]]  # the default is priority 0


def test_default_scheduling_schedules_exactly_as_first_come_first_served() -> None:
    """Step for step the scheduler before service classes (tests/engine/fcfs_scheduler.py),
    through chunked prefills, prefix hits, preemption for blocks and finishes."""
    rng = np.random.default_rng(3)
    config = SchedulerConfig(max_num_seqs=5, max_num_batched_tokens=20, max_prefill_tokens=12)
    new, old = Scheduler(config, KVCachePool(24, 4)), FcfsScheduler(config, KVCachePool(24, 4))
    number: dict[int, int] = {}  # seq_id -> arrival number, the same for both twins
    shared = rng.integers(0, 100, 9).tolist()
    kinds: set[str] = set()
    for _ in range(400):
        if rng.random() < 0.35:
            prompt = (shared if rng.random() < 0.5 else []) + rng.integers(0, 100, 12).tolist()
            params = SamplingParams(max_tokens=int(rng.integers(1, 25)))
            for sched in (new, old):
                seq = make_seq(prompt, params)
                number[seq.seq_id] = len(number) // 2
                sched.add(seq)
        batches = new.schedule(), old.schedule()
        views = [
            [[number[s.seq_id] for s in seqs] for seqs in (b.seqs, b.preempted, b.admitted)]
            + [b.num_new_tokens]
            for b in batches
        ]
        assert views[0] == views[1]
        kinds.update(name for name, seqs in zip(KINDS, views[0][1:3], strict=True) if seqs)
        token = int(rng.integers(0, 100))
        for twin, batch in ((new, batches[0]), (old, batches[1])):
            twin.pool.mark_computed(batch.seqs, batch.num_new_tokens)
            for seq in batch.seqs:
                if seq.num_computed_tokens == seq.num_tokens:
                    seq.append_token(token)
                    if seq.num_output_tokens >= seq.params.max_tokens:
                        twin.finish(seq, FinishReason.LENGTH)
    assert kinds == {"preempted", "admitted"} and new.pool.stats.hits > 0
    assert new.num_preemptions == old.num_preemptions > 0


def test_two_tenants_of_one_priority_get_tokens_by_their_weights() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4), KVCachePool(512, 4))
    light, heavy = Scheduling(tenant="a", weight=1.0), Scheduling(tenant="b", weight=3.0)
    params = SamplingParams(max_tokens=8)
    for _ in range(150):  # both flood at once: far more than either can be served meanwhile
        sched.add(make_seq([1] * 6, params, scheduling=light))
        sched.add(make_seq([2] * 6, params, scheduling=heavy))
    served = {"a": 0, "b": 0}
    for _ in range(300):
        batch = step(sched)
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            served[seq.scheduling.tenant] += n
    assert {seq.scheduling.tenant for seq in sched.waiting} == {"a", "b"}  # still flooding
    assert served["b"] / served["a"] == pytest.approx(3.0, rel=0.1)


def test_a_higher_priority_preempts_the_lowest_class_with_fewest_computed_tokens() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=3), KVCachePool(64, 4))
    long = SamplingParams(max_tokens=50)
    old_batch = make_seq([1] * 8, long, scheduling=BATCH)
    standard = make_seq([2] * 2, long, scheduling=STANDARD)
    new_batch = make_seq([3] * 4, long, scheduling=BATCH)
    for seq in (old_batch, standard, new_batch):
        sched.add(seq)
        step(sched)
    assert sched.running == [standard, old_batch, new_batch]  # kept by priority
    chat = [make_seq([4] * 3, long, scheduling=INTERACTIVE) for _ in range(4)]
    sched.add(chat[0])
    batch = step(sched)
    # new_batch has computed more tokens than standard, but is of the lower class.
    assert batch.preempted == [new_batch] and batch.admitted == [chat[0]]
    assert new_batch.is_protected and new_batch.num_computed_tokens == 0
    assert sched.running == [chat[0], standard, old_batch]
    sched.add(chat[1])
    assert step(sched).preempted == [old_batch]
    sched.add(chat[2])
    assert step(sched).preempted == [standard]
    sched.add(chat[3])  # nothing of a lower priority runs: it waits
    batch = step(sched)
    assert not batch.preempted and not batch.admitted and sched.waiting[0] is chat[3]
    assert list(sched.waiting) == [chat[3], standard, old_batch, new_batch]
    assert sched.num_preemptions == 3
    assert sched.running_by_priority() == {0: 3}
    assert sched.waiting.counts_by_priority() == {0: 1, 1: 1, 2: 2}


def test_preemption_for_blocks_only_when_it_makes_the_room() -> None:
    sched = Scheduler(SchedulerConfig(), KVCachePool(6, 4))
    bulk = make_seq([1] * 15, SamplingParams(max_tokens=50), scheduling=BATCH)
    sched.add(bulk)
    step(sched)  # 4 of the 6 blocks
    too_big = make_seq([2] * 27, scheduling=INTERACTIVE)  # 7 blocks: more than bulk frees
    sched.add(too_big)
    batch = step(sched)
    assert not batch.preempted and sched.running == [bulk]
    sched.finish(too_big, FinishReason.ABORT)
    fits = make_seq([3] * 12, scheduling=INTERACTIVE)  # 3 blocks; 2 free
    sched.add(fits)
    batch = step(sched)
    assert batch.preempted == [bulk] and batch.admitted == [fits]


def test_growth_preempts_the_newest_of_the_lowest_priority() -> None:
    sched = Scheduler(SchedulerConfig(), KVCachePool(4, 4))
    bulk = make_seq([1] * 7, SamplingParams(max_tokens=50), scheduling=BATCH)
    chat = make_seq([2] * 7, SamplingParams(max_tokens=50), scheduling=INTERACTIVE)
    sched.add(bulk)
    step(sched)
    sched.add(chat)
    step(sched)  # two blocks each: the pool is full
    # bulk needs a third block. First come first served would preempt chat, the newest.
    batch = step(sched)
    assert batch.preempted == [bulk] and batch.seqs == [chat]
    assert not bulk.is_protected  # preempted for a block, not for a priority


def test_no_preemption_ping_pong_and_batch_progresses_under_an_interactive_flood() -> None:
    """One slot; an interactive request arrives every step and takes it for a step, so the
    slot is always wanted. The batch request still finishes: ageing admits it, and each time
    it is preempted it has made a token of progress since the last time."""
    sched = Scheduler(SchedulerConfig(max_num_seqs=1, starvation_steps=5), KVCachePool(64, 4))
    bulk = make_seq([1] * 6, SamplingParams(max_tokens=6), scheduling=BATCH)
    sched.add(bulk)
    tokens_when_preempted = []
    steps = 0
    while not bulk.is_finished:
        sched.add(make_seq([2] * 3, SamplingParams(max_tokens=1), scheduling=INTERACTIVE))
        if bulk in step(sched).preempted:
            tokens_when_preempted.append(bulk.num_tokens)
        steps += 1
        assert steps <= 6 * (5 + 3)
    assert len(tokens_when_preempted) >= 3
    assert tokens_when_preempted == sorted(set(tokens_when_preempted))  # progress each time
    assert sched.num_preemptions == len(tokens_when_preempted) < bulk.num_output_tokens


def test_batch_runs_unhindered_while_interactive_requests_leave_room() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4), KVCachePool(64, 4))
    bulk = [make_seq([1] * 5, SamplingParams(max_tokens=20), scheduling=BATCH) for _ in range(2)]
    for seq in bulk:
        sched.add(seq)
    steps = 0
    while not all(seq.is_finished for seq in bulk):
        sched.add(make_seq([2] * 3, SamplingParams(max_tokens=2), scheduling=INTERACTIVE))
        step(sched)
        steps += 1
    assert steps == 20 and sched.num_preemptions == 0  # one token a step from the start


def test_a_waiting_sequence_with_a_token_in_flight_waits_for_it() -> None:
    """A sequence preempted while its step is in flight (asynchronous scheduling) is recomputed
    from its tokens only once that token has arrived."""
    sched = Scheduler(SchedulerConfig(), KVCachePool(64, 4))
    seq = make_seq([1, 2, 3])
    sched.add(seq)
    seq.num_pending = 1
    assert not sched.schedule().seqs and seq.status is SequenceStatus.WAITING
    seq.num_pending = 0
    assert sched.schedule().admitted == [seq]


def test_an_interactive_arrival_gets_an_urgent_step_of_its_own_beside_a_batch_flood() -> None:
    """Its first token comes from a step of the interactive sequences alone, not from one of
    every batch decode too; the batch skips that step only, never two in a row."""
    sched = Scheduler(SchedulerConfig(max_num_seqs=16), KVCachePool(256, 4))
    bulk = [make_seq([1] * 5, SamplingParams(max_tokens=50), scheduling=BATCH) for _ in range(9)]
    for seq in bulk:
        sched.add(seq)
    step(sched)
    chats = [make_seq([2] * 3, SamplingParams(max_tokens=20), scheduling=INTERACTIVE)]
    sched.add(chats[0])
    batch = step(sched)
    assert batch.seqs == batch.admitted == chats and sched.num_urgent_steps == 1
    chats.append(make_seq([3] * 3, SamplingParams(max_tokens=20), scheduling=INTERACTIVE))
    sched.add(chats[1])
    batch = step(sched)  # never two in a row: everyone, the second chat admitted too
    assert batch.seqs == [chats[0], *bulk, chats[1]] and batch.admitted == [chats[1]]
    chats.append(make_seq([4] * 3, SamplingParams(max_tokens=20), scheduling=INTERACTIVE))
    sched.add(chats[2])
    batch = step(sched)  # 9 batch sequences against 2 running chats and this one: not 4 to 1
    assert batch.seqs == [*chats[:2], *bulk, chats[2]] and sched.num_urgent_steps == 1
    assert not sched.num_preemptions


def test_no_urgent_step_for_an_arrival_that_cannot_be_admitted() -> None:
    sched = Scheduler(SchedulerConfig(), KVCachePool(24, 4))
    bulk = [make_seq([1] * 7, SamplingParams(max_tokens=50), scheduling=BATCH) for _ in range(5)]
    for seq in bulk:
        sched.add(seq)
    step(sched)  # 10 of the 24 blocks
    chat = make_seq([2] * 12, SamplingParams(max_tokens=50), scheduling=INTERACTIVE)
    sched.add(chat)
    assert step(sched).seqs == [chat] and sched.num_urgent_steps == 1
    step(sched)
    late = make_seq([3] * 100, SamplingParams(max_tokens=2), scheduling=INTERACTIVE)
    sched.add(late)  # 25 blocks: no room whatever is preempted, so the batch is not held up
    batch = step(sched)
    assert not batch.admitted and batch.seqs == [chat, *bulk]
    assert sched.num_urgent_steps == 1 and not sched.num_preemptions
