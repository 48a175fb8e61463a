from __future__ import annotations

from ember.engine.scheduling import Scheduling
from ember.engine.sequence import Sequence
from ember.engine.waiting_queue import WaitingQueue

from .helpers import make_seq


def seq_of(priority: int = 0, tenant: str = "", weight: float = 1.0) -> Sequence:
    return make_seq([1, 2, 3], scheduling=Scheduling(priority, tenant, weight))


def take(queue: WaitingQueue) -> Sequence:
    """Admit the head (charged, while tenants contend, its 3 prompt tokens and 16 to come)."""
    queue.tick()
    seq = queue.head()
    assert seq is not None
    queue.pop(seq)
    return seq


def test_priority_then_arrival_and_a_preempted_sequence_first() -> None:
    queue = WaitingQueue(starvation_steps=100)
    batch, standard, chat, chat2 = seq_of(2), seq_of(1), seq_of(0), seq_of(0)
    for seq in (batch, standard, chat, chat2):
        queue.add(seq)
    assert list(queue) == [chat, chat2, standard, batch] and queue[0] is chat
    assert queue.counts_by_priority() == {0: 2, 1: 1, 2: 1}
    assert take(queue) is chat
    preempted = seq_of(1)
    queue.add(preempted, front=True)
    assert [take(queue) for _ in range(4)] == [chat2, preempted, standard, batch]
    assert not queue and queue.head() is None and queue.counts_by_priority() == {}


def test_tenants_of_one_priority_are_served_by_tokens_over_weight() -> None:
    queue = WaitingQueue(starvation_steps=100)
    for _ in range(40):
        queue.add(seq_of(tenant="a", weight=1.0))
        queue.add(seq_of(tenant="b", weight=3.0))
    picks = [take(queue).scheduling.tenant for _ in range(40)]
    assert picks.count("b") == 30 and picks.count("a") == 10


def test_a_tenant_back_from_idle_gets_its_share_not_its_idle_time_as_credit() -> None:
    queue = WaitingQueue(starvation_steps=100)
    for _ in range(50):
        queue.add(seq_of(tenant="busy"))
    for _ in range(30):
        take(queue)  # "busy" alone: its virtual time runs to 300
    for _ in range(20):
        queue.add(seq_of(tenant="back"))
    picks = [take(queue).scheduling.tenant for _ in range(20)]
    assert 9 <= picks.count("back") <= 11  # alternating, not 20 in a row


def test_a_waiting_priority_goes_first_after_starvation_steps_without_admission() -> None:
    queue = WaitingQueue(starvation_steps=5)
    batch = seq_of(2)
    queue.add(batch)
    for _ in range(30):
        queue.add(seq_of(0))
    picks = [take(queue).scheduling.priority for _ in range(12)]
    assert picks.index(2) == 5  # after 5 steps without an admission of priority 2


def test_remove_and_index() -> None:
    queue = WaitingQueue(starvation_steps=100)
    a, b, c = seq_of(tenant="x"), seq_of(tenant="y"), seq_of(tenant="x")
    for seq in (a, b, c):
        queue.add(seq)
    queue.remove(b)
    assert len(queue) == 2 and list(queue) == [a, c] and queue[1] is c
    queue.remove(a)
    queue.remove(c)
    assert not queue
