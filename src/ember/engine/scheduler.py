"""Continuous batching: decide which sequences run this step and with how many tokens.

Each step has a token budget, and within it a smaller budget for prefill (prompt chunks) where
prefill is slow: on the CPU a step's length is mostly its prefill tokens, and every running
stream waits for the step. Running sequences go first (decode tokens and the rest of chunked
prefills), oldest first; then waiting sequences are admitted, oldest first, while their blocks
fit. Room for the next waiting sequence's first chunk (at most half the prefill budget) is
kept from running prefills, so a long prompt in progress cannot hold a new request back for its
whole length, and still gets at least half the prefill budget each step. When a running
sequence needs a block and none is free, the newest running sequence is preempted: its blocks
are freed and it will be recomputed from its tokens.
Under service classes (`Sequence.scheduling`), waiting sequences are admitted by the
`WaitingQueue`'s order (priority, then the tenants' fair share, then arrival), and running ones
are kept by priority, so higher priorities get the step's budget first and the newest of the
lowest priority is the one preempted for a block. When the next waiting sequence has no room
(a slot or its blocks), running sequences of lower priorities are preempted for it, the lowest
priority first and within it the one with the fewest computed tokens, but only when that makes
the room; a sequence so preempted is protected until it has made a token of progress, so it
cannot be preempted back and forth without end. Preemption for priority is looked at once a
step, for the next waiting sequence only. And when the next waiting sequence can be admitted
and lower priorities than its own run URGENT_RATIO times as many sequences as its priority and
above, the step is an urgent one: only the running sequences of its priority and above, and
the admissions of those priorities, so its first token waits for a step of a few sequences, not
for one of a whole batch of lower-priority decodes (at 256 batch sequences on an H100 a step of
the default model takes ~3 ms, a step of a few ~0.6). The lower priorities skip that step,
never two in a row; the ratio keeps the skipped work large against the urgent step's own
fixed cost, which is what they lose. Under the default
`Scheduling` (all equal) none of this changes the order: first come, first served.
A running sequence's tokens include those sampled by a step still in flight (`num_pending`):
it decodes the next one from the device's copy, unless that token is its last by max_tokens.
A constrained sequence does too: the model runner samples its step once the token in flight
has reached its grammar. The scheduler says *what* runs; the model runner decides *how*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.engine.kv_cache_pool import KVCachePool
from ember.engine.sequence import FinishReason, Sequence, SequenceStatus
from ember.engine.waiting_queue import WaitingQueue

# An urgent step is taken where lower priorities run at least this many times as many sequences
# as the waiting sequence's priority and above (itself included).
URGENT_RATIO = 4


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 1024
    max_prefill_tokens: int = 1024  # prompt tokens per step; decodes are not counted
    # A priority with requests waiting and none admitted for this many steps goes first at the
    # next room (a slot and blocks free): lower classes wait behind higher ones, never forever.
    starvation_steps: int = 100

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_prefill_tokens) < 1:
            raise ValueError(
                "max_num_seqs, max_num_batched_tokens and max_prefill_tokens must be positive"
            )
        if self.starvation_steps < 0:
            raise ValueError(f"starvation_steps must be 0 or more, got {self.starvation_steps}")


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # Waiting sequences this step moved into the running batch (also in `seqs`).
    admitted: list[Sequence] = field(default_factory=list)
    # Whether a sequence with a grammar is among `seqs` (its step needs token masks).
    constrained: bool = False

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: KVCachePool) -> None:
        self.config = config
        self.pool = pool
        self.waiting = WaitingQueue(config.starvation_steps)
        self.running: list[Sequence] = []  # by priority, then by admission
        self.num_preemptions = 0
        self.num_urgent_steps = 0
        self._running_by_priority: dict[int, int] = {}
        self._last_step_urgent = False

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def running_by_priority(self) -> dict[int, int]:
        return dict(sorted(self._running_by_priority.items()))

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.add(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        config = self.config
        budget = config.max_num_batched_tokens
        prefill_budget = min(config.max_prefill_tokens, budget)
        seqs, counts = batch.seqs, batch.num_new_tokens
        running, waiting = self.running, self.waiting
        block_size = self.pool.block_size
        waiting.tick()
        head = waiting.head()
        by_priority = self._running_by_priority
        if head is not None and by_priority and head.scheduling.priority < max(by_priority):
            self._preempt_for(head, batch)
        # A running sequence's growth preempting others (below) means nothing new fits.
        num_preempted_for_priority = len(batch.preempted)
        urgent = self._urgent_priority(head)
        self._last_step_urgent = urgent is not None
        if urgent is not None:
            self.num_urgent_steps += 1
        reserved = 0
        if head is not None and len(running) < config.max_num_seqs:
            reserved = min(prefill_budget // 2, head.num_uncomputed_tokens)
        index = 0
        while index < len(running) and budget > 0:
            seq = running[index]
            if urgent is not None and seq.scheduling.priority > urgent:
                break  # running is by priority: the rest wait for the next step
            if seq.waits_for_pending:  # its last token is in flight
                index += 1
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
            batch.constrained = batch.constrained or seq.grammar is not None
            budget -= n
            index += 1
        if len(batch.preempted) == num_preempted_for_priority:
            self._admit(batch, budget, prefill_budget, urgent)
        return batch

    def _urgent_priority(self, head: Sequence | None) -> int | None:
        """`head`'s priority if this step should be an urgent one for it (the module's
        docstring), else None."""
        by_priority = self._running_by_priority
        if (
            head is None
            or self._last_step_urgent
            or not by_priority
            or head.scheduling.priority >= max(by_priority)
            or head.num_pending
            or len(self.running) >= self.config.max_num_seqs
        ):
            return None
        priority = head.scheduling.priority
        lower = sum(count for p, count in by_priority.items() if p > priority)
        if lower < URGENT_RATIO * (len(self.running) - lower + 1):
            return None
        return priority if not self.pool.blocks_short_for(head) else None

    def _admit(
        self, batch: ScheduledBatch, budget: int, prefill_budget: int, urgent: int | None
    ) -> None:
        """Admit waiting sequences in the queue's order while they fit (in an urgent step,
        those of its priority and above)."""
        max_num_seqs = self.config.max_num_seqs
        while min(budget, prefill_budget) > 0 and len(self.running) < max_num_seqs:
            seq = self.waiting.head()
            # A sequence preempted this step may still have a token in flight: it is
            # recomputed from its tokens once that token has arrived.
            if (
                seq is None
                or seq.num_pending
                or (urgent is not None and seq.scheduling.priority > urgent)
                or not self.pool.try_allocate(seq)
            ):
                break
            self.waiting.pop(seq)
            seq.status = SequenceStatus.RUNNING
            self._add_running(seq)
            n = min(seq.num_uncomputed_tokens, budget, prefill_budget)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            batch.admitted.append(seq)
            batch.constrained = batch.constrained or seq.grammar is not None
            budget -= n
            prefill_budget -= n

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Retire a sequence (finished or aborted) and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.waiting.settle(seq)
            self._remove_running(seq)
            self.pool.free(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _make_room(self, seq: Sequence, num_tokens: int, batch: ScheduledBatch) -> bool:
        while not self.pool.ensure_capacity(seq, num_tokens):
            # The newest of the lowest priority: running is kept in that order.
            victim = self.running[-1]
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt_for(self, head: Sequence, batch: ScheduledBatch) -> None:
        """Preempt running sequences of lower priorities than `head` if that makes its room."""
        need_slot = len(self.running) >= self.config.max_num_seqs
        short = self.pool.blocks_short_for(head)
        if not need_slot and not short:
            return
        priority = head.scheduling.priority
        candidates = sorted(
            (
                seq
                for seq in self.running
                if seq.scheduling.priority > priority
                and not seq.is_protected
                # Its last token is in flight: its slot and blocks free up at the next step.
                and not (seq.num_pending and seq.reaches_max_tokens)
            ),
            key=lambda seq: (-seq.scheduling.priority, seq.num_computed_tokens, -seq.seq_id),
        )
        victims: list[Sequence] = []
        freed = 0
        for seq in candidates:
            if freed >= short and (victims or not need_slot):
                break
            victims.append(seq)
            freed += self.pool.blocks_freed_by(seq)
        if freed < short or (need_slot and not victims):
            return  # no room even then: preempting would only waste their work
        for seq in victims:
            self._preempt(seq, protect=True)
            batch.preempted.append(seq)

    def _preempt(self, seq: Sequence, protect: bool = False) -> None:
        self.waiting.settle(seq)
        self._remove_running(seq)
        self.pool.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        if protect:
            seq.protected_until = len(seq.token_ids) + seq.num_pending + 1
        self.waiting.add(seq, front=True)

    def _add_running(self, seq: Sequence) -> None:
        running = self.running
        priority = seq.scheduling.priority
        if not running or running[-1].scheduling.priority <= priority:
            running.append(seq)
        else:
            index = next(i for i, s in enumerate(running) if s.scheduling.priority > priority)
            running.insert(index, seq)
        by_priority = self._running_by_priority
        by_priority[priority] = by_priority.get(priority, 0) + 1

    def _remove_running(self, seq: Sequence) -> None:
        self.running.remove(seq)
        by_priority = self._running_by_priority
        priority = seq.scheduling.priority
        by_priority[priority] -= 1
        if not by_priority[priority]:
            del by_priority[priority]
