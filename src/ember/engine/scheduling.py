"""How the scheduler orders one request against the others: its priority and its tenant's share.

The HTTP server sets it from the caller's tenant and service class (and the request's own
`priority`, which may only lower urgency); the offline `LLM` API leaves the default, under
which every request is equal and the scheduler is first-come first-served.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scheduling:
    # Lower runs first (vLLM's convention): waiting requests are admitted by priority, and a
    # request may preempt running ones of a higher number when there is no room for it.
    priority: int = 0
    # Fair share is kept between tenants of one priority: each gets tokens in proportion to
    # its weight.
    tenant: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"a tenant's weight must be positive, got {self.weight}")
