"""Continuous batching: decide which sequences run this step and with how many tokens.

Each step has a token budget, and within it a smaller budget for prefill (prompt chunks) where
prefill is slow: on the CPU a step's length is mostly its prefill tokens, and every running
stream waits for the step. Running sequences go first (decode tokens and the rest of chunked
prefills), oldest first; then waiting sequences are admitted, oldest first, while their blocks
fit. Room for the oldest waiting sequence's first chunk (at most half the prefill budget) is
kept from running prefills, so a long prompt in progress cannot hold a new request back for its
whole length, and still gets at least half the prefill budget each step. When a running
sequence needs a block and none is free, the newest running sequence is preempted: its blocks
are freed and it will be recomputed from its tokens.
A running sequence's tokens include those sampled by a step still in flight (`num_pending`):
it decodes the next one from the device's copy, unless that token is its last by max_tokens.
The scheduler says *what* runs; the model runner decides *how*.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 1024
    max_prefill_tokens: int = 1024  # prompt tokens per step; decodes are not counted

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_prefill_tokens) < 1:
            raise ValueError(
                "max_num_seqs, max_num_batched_tokens and max_prefill_tokens must be positive"
            )


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # Waiting sequences this step moved into the running batch (also in `seqs`).
    admitted: list[Sequence] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: KVCachePool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        config = self.config
        budget = config.max_num_batched_tokens
        prefill_budget = min(config.max_prefill_tokens, budget)
        seqs, counts = batch.seqs, batch.num_new_tokens
        running, waiting = self.running, self.waiting
        block_size = self.pool.block_size
        reserved = 0
        if waiting and len(running) < config.max_num_seqs:
            reserved = min(prefill_budget // 2, waiting[0].num_uncomputed_tokens)
        index = 0
        while index < len(running) and budget > 0:
            seq = running[index]
            if seq.num_pending and seq.reaches_max_tokens:
                index += 1  # its last token is on its way: it finishes when that arrives
                continue
            computed = seq.num_computed_tokens
            n = min(seq.num_uncomputed_tokens, budget)
            if n > 1:  # a prefill chunk (a decode is one token)
                n = min(n, prefill_budget - reserved)
                if n <= 0:
                    index += 1
                    continue
                prefill_budget -= n
            # Most steps need no new block: skip the pool unless the table is full.
            if computed + n > len(seq.block_table) * block_size and not self._make_room(
                seq, computed + n, batch
            ):
                break  # `seq` itself was the newest and got preempted
            seqs.append(seq)
            counts.append(n)
            budget -= n
            index += 1
        if batch.preempted:
            return batch
        while waiting and min(budget, prefill_budget) > 0 and len(running) < config.max_num_seqs:
            seq = waiting[0]
            if not self.pool.try_allocate(seq):
                break
            waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget, prefill_budget)
            seqs.append(seq)
            counts.append(n)
            batch.admitted.append(seq)
            budget -= n
            prefill_budget -= n
        return batch

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Retire a sequence (finished or aborted) and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.pool.free(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _make_room(self, seq: Sequence, num_tokens: int, batch: ScheduledBatch) -> bool:
        while not self.pool.ensure_capacity(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
