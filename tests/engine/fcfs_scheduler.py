"""The scheduler as it was before service classes (commit f4a3b6c), kept as the reference that
the default `Scheduling` must match step for step: first come, first served."""

from __future__ import annotations

from collections import deque

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.scheduler import ScheduledBatch, SchedulerConfig
from ember.engine.sequence import FinishReason, Sequence, SequenceStatus


class FcfsScheduler:
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
