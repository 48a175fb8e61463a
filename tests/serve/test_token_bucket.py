"""`TokenBucket`: a seeded random walk of reservations, refunds and time checks its bounds."""

from __future__ import annotations

import random

import pytest

from ember.serve.token_bucket import TokenBucket


def test_reserve_is_all_or_nothing_and_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(100, 10, now=0.0)
    assert bucket.reserve(60, 0.0) and bucket.available(0.0) == 40
    assert not bucket.reserve(41, 0.0) and bucket.available(0.0) == 40
    assert bucket.seconds_until(41, 0.0) == pytest.approx(0.1)
    assert bucket.reserve(41, 0.1)
    assert bucket.seconds_until(101, 0.1) is None  # more than it ever holds
    bucket.refund(500, 0.1)
    assert bucket.available(0.1) == 100  # never past capacity
    assert bucket.seconds_until_full(0.1) == 0


def test_resize_keeps_what_was_spent() -> None:
    bucket = TokenBucket.full(100, 10, now=0.0)
    bucket.reserve(70, 0.0)
    bucket.resize(50, 5, 0.0)
    assert bucket.available(0.0) == 0 and bucket.capacity == 50
    bucket.resize(200, 5, 0.0)  # the level never goes below zero: 50 counts as spent
    assert bucket.available(0.0) == 150


@pytest.mark.parametrize("seed", range(20))
def test_random_walk_never_overshoots(seed: int) -> None:
    """Over any interval of length T, tokens taken less tokens refunded are at most
    capacity + rate * T, the level stays in [0, capacity], and an outstanding reservation is
    never refunded more than it took."""
    rng = random.Random(seed)
    capacity, rate = rng.choice([(60, 1.0), (1000, 1000 / 60), (5, 0.5)])
    bucket = TokenBucket.full(capacity, rate, now=0.0)
    now = 0.0
    events: list[tuple[float, float]] = []  # (time, net tokens taken: + reserve, - refund)
    outstanding: list[float] = []
    for _ in range(400):
        now += rng.choice([0.0, 0.0, rng.random() * 2, rng.random() * 30])
        if outstanding and rng.random() < 0.4:
            held = outstanding.pop(rng.randrange(len(outstanding)))
            back = held * rng.choice([0.0, 1.0, rng.random()])
            bucket.refund(back, now)
            events.append((now, -back))
        else:
            amount = rng.choice([1, rng.randrange(1, capacity + 1), capacity * 2])
            before = bucket.available(now)
            if bucket.reserve(amount, now):
                assert amount <= before
                outstanding.append(amount)
                events.append((now, amount))
            else:
                assert amount > before
        assert -1e-9 <= bucket.available(now) <= capacity + 1e-9
    for i, (start, _) in enumerate(events):
        net = 0.0
        for end, taken in events[i:]:
            net += taken
            assert net <= capacity + rate * (end - start) + 1e-6, (seed, start, end, net)
