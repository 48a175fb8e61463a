"""Service classes: how urgent a tenant's requests are, and what happens to them under load."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceClass:
    name: str
    # The engine's `Scheduling.priority`: lower runs first, and may preempt higher numbers.
    priority: int
    # Sequences of this class waiting for room in the engine at most; more: 503.
    max_queued: int
    # Seconds a request may wait for the engine to start it; then 503.
    queue_timeout: float
    # Under overload, waiting requests of a sheddable class are ended (503) to make room for
    # requests of a class that is not.
    sheddable: bool
    # Seconds between a stream's chunks at most; None: the server's --stream-interval. Longer
    # for batch work: its streams then cost the server's event loop fewer wake-ups and writes,
    # which interactive streams get instead.
    stream_interval: float | None = None
    # The server's own work for it (parsing, tokenizing, chunks) yields to other classes' when
    # the event loop is busy (`BackgroundLane`): a flood of batch streams then delays an
    # interactive request by a few items of work, not by a wave of hundreds.
    background: bool = False


DEFAULT_SERVICE_CLASSES: dict[str, ServiceClass] = {
    "interactive": ServiceClass(
        "interactive", 0, max_queued=512, queue_timeout=60.0, sheddable=False
    ),
    "standard": ServiceClass("standard", 1, max_queued=512, queue_timeout=300.0, sheddable=False),
    "batch": ServiceClass(
        "batch",
        2,
        max_queued=4096,
        queue_timeout=3600.0,
        sheddable=True,
        stream_interval=0.1,
        background=True,
    ),
}
# The class of a tenant that names none, of `--api-key`'s tenant and of an open server's callers.
DEFAULT_CLASS = "standard"
