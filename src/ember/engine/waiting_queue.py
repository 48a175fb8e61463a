"""Which waiting sequence the scheduler admits next.

By priority (lower first); between the tenants of one priority, the tenant served least for its
weight (fair share); then by arrival. It is a queue per (priority, tenant) and a pick across
their heads, so a pick costs the number of tenants waiting, never a sort of the whole queue.
Under the default `Scheduling` there is one queue, and this is first-come first-served.

Fair share is kept as virtual time, as in start-time fair queuing: a tenant's tokens, prompt
and generated, over its weight. A sequence is charged when it is admitted, for what it will
cost: its uncomputed tokens and the tokens it may still generate; what it did not use is given
back when it finishes or is preempted (`settle`). Charging at admission matters: charged only as
its tokens were computed, a tenant's admissions barely moved its share, and whichever tenant was
behind took every free slot until its running sequences caught up (tenants weighted 1:3 got
1:4-1:6 on a real server). A tenant that had nothing waiting comes back at its priority's clock
(the virtual time of the tenant picked last), so an idle spell is not saved up as credit to
flood with later. Only admissions while tenants contend (two or more waiting at one priority)
are charged: what a tenant got while nobody else asked is no debt.

A priority with requests waiting and none admitted for `starvation_steps` scheduler steps goes
first at the next room: lower priorities are delayed by higher ones, never starved.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ember.engine.sequence import Sequence


@dataclass(slots=True, eq=False)
class _TenantQueue:
    seqs: deque[Sequence] = field(default_factory=deque)
    vtime: float = 0.0  # tokens computed over weight


def _share_order(queue: _TenantQueue) -> tuple[float, int]:
    return queue.vtime, queue.seqs[0].seq_id


@dataclass(slots=True, eq=False)
class _Level:
    priority: int
    tenants: dict[str, _TenantQueue] = field(default_factory=dict)
    active: dict[str, _TenantQueue] = field(default_factory=dict)  # those with sequences waiting
    size: int = 0
    clock: float = 0.0
    last_admit_step: int = 0

    def head_queue(self) -> _TenantQueue:
        if len(self.active) == 1:
            return next(iter(self.active.values()))
        return min(self.active.values(), key=_share_order)


class WaitingQueue:
    def __init__(self, starvation_steps: int) -> None:
        self.starvation_steps = starvation_steps
        self._levels: dict[int, _Level] = {}
        self._order: list[_Level] = []  # by priority
        self._size = 0
        self._step = 0
        # Sequences charged at admission: seq id -> (tokens charged, tokens computed then).
        self._charged: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Sequence]:
        """Every waiting sequence by priority, then tenants by their share now, then arrival
        (a snapshot: each admission moves its tenant's share, and ageing may pick first)."""
        for level in self._order:
            for queue in sorted(level.active.values(), key=_share_order):
                yield from queue.seqs

    def __getitem__(self, index: int) -> Sequence:
        for position, seq in enumerate(self):
            if position == index:
                return seq
        raise IndexError(f"index {index} is outside the {self._size} waiting sequences")

    def tick(self) -> None:
        """One scheduler step has begun (the clock that ageing counts in)."""
        self._step += 1

    def add(self, seq: Sequence, front: bool = False) -> None:
        """Queue at the back of its tenant's queue, or at the front (a preempted sequence)."""
        scheduling = seq.scheduling
        level = self._levels.get(scheduling.priority)
        if level is None:
            level = self._levels[scheduling.priority] = _Level(scheduling.priority)
            bisect.insort(self._order, level, key=lambda lv: lv.priority)
        queue = level.tenants.get(scheduling.tenant)
        if queue is None:
            queue = level.tenants[scheduling.tenant] = _TenantQueue()
        if not queue.seqs:
            queue.vtime = max(queue.vtime, level.clock)
            level.active[scheduling.tenant] = queue
        if not level.size:
            level.last_admit_step = self._step
        if front:
            queue.seqs.appendleft(seq)
        else:
            queue.seqs.append(seq)
        level.size += 1
        self._size += 1

    def head(self) -> Sequence | None:
        """The sequence to admit next: the most starved priority's pick if one has waited past
        `starvation_steps`, else the highest priority's."""
        chosen: _Level | None = None
        oldest = self._step - self.starvation_steps
        for level in self._order:
            if not level.size:
                continue
            if chosen is None:
                chosen = level
            if level.last_admit_step < oldest:
                chosen, oldest = level, level.last_admit_step
        return None if chosen is None else chosen.head_queue().seqs[0]

    def pop(self, seq: Sequence) -> None:
        """Take `seq`, the head, out to run."""
        level, queue = self._queue_of(seq)
        assert queue.seqs[0] is seq, "only the head is admitted"
        queue.seqs.popleft()
        level.last_admit_step = self._step
        level.clock = max(level.clock, queue.vtime)
        if len(level.active) > 1:
            remaining = seq.params.max_tokens - seq.num_output_tokens - seq.num_pending
            cost = seq.num_uncomputed_tokens + max(0, remaining)
            queue.vtime += cost / seq.scheduling.weight
            self._charged[seq.seq_id] = (cost, seq.num_computed_tokens)
        self._drop(level, queue, seq)

    def remove(self, seq: Sequence) -> None:
        level, queue = self._queue_of(seq)
        queue.seqs.remove(seq)
        self._drop(level, queue, seq)

    def settle(self, seq: Sequence) -> None:
        """A running sequence leaves (finished, aborted or preempted): give its tenant back
        what it was charged at admission and did not compute."""
        entry = self._charged.pop(seq.seq_id, None)
        if entry is None:
            return
        cost, computed_then = entry
        unused = cost - max(0, seq.num_computed_tokens - computed_then)
        if unused > 0:
            _, queue = self._queue_of(seq)
            queue.vtime -= unused / seq.scheduling.weight

    def counts_by_priority(self) -> dict[int, int]:
        return {level.priority: level.size for level in self._order if level.size}

    def _queue_of(self, seq: Sequence) -> tuple[_Level, _TenantQueue]:
        level = self._levels[seq.scheduling.priority]
        return level, level.tenants[seq.scheduling.tenant]

    def _drop(self, level: _Level, queue: _TenantQueue, seq: Sequence) -> None:
        if not queue.seqs:
            del level.active[seq.scheduling.tenant]
        level.size -= 1
        self._size -= 1
