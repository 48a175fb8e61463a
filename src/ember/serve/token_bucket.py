"""A token bucket that is charged before the work runs and refunded for what the work did not use.

The bucket holds at most `capacity` and refills at `rate` per second. `reserve` takes an amount
only when the bucket holds all of it, so its level never goes below zero: over any interval of
length T the amount taken, less the amount refunded, is at most `capacity + rate * T` (the
level can only have started at `capacity` and gained `rate * T`). With `capacity` a minute's
worth, a tenant that starts full and runs for a minute gets at most two minutes' worth in that
first minute and one minute's worth per minute after; and since the largest amount a request
can use is taken before it starts, no request in flight can push a tenant past its limit.

Pure: time is an argument (seconds on any monotonic clock), so tests drive it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float  # refill per second
    level: float
    updated: float  # the time `level` was last brought up to date

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        if capacity < 0 or rate <= 0:
            raise ValueError(f"a bucket needs capacity >= 0 and rate > 0, got {capacity}, {rate}")
        return cls(capacity, rate, capacity, now)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level

    def reserve(self, amount: float, now: float) -> bool:
        """Take `amount` if the bucket holds it all; False (and nothing taken) otherwise."""
        self._refill(now)
        if amount > self.level:
            return False
        self.level -= amount
        return True

    def refund(self, amount: float, now: float) -> None:
        """Give back part of an earlier reservation (never past `capacity`)."""
        self._refill(now)
        self.level = min(self.capacity, self.level + max(0.0, amount))

    def seconds_until(self, amount: float, now: float) -> float | None:
        """How long until `amount` can be reserved; None if it never can (over `capacity`)."""
        if amount > self.capacity:
            return None
        missing = amount - self.available(now)
        return max(0.0, missing / self.rate)

    def seconds_until_full(self, now: float) -> float:
        return (self.capacity - self.available(now)) / self.rate

    def resize(self, capacity: float, rate: float, now: float) -> None:
        """New limits (a reloaded tenants file): what was spent stays spent."""
        self._refill(now)
        spent = self.capacity - self.level
        self.capacity, self.rate = capacity, rate
        self.level = max(0.0, capacity - spent)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
