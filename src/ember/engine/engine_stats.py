"""What an engine step reports of the engine's state (queues, KV cache, prefix cache), for the
server's metrics. Its own light module: the server reads it without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_usage: float
    num_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    last_batch_size: int
    last_batch_tokens: int
    # Sequences by priority (`Scheduling.priority`), for per-class metrics; priorities with
    # none are left out.
    running_by_priority: dict[int, int] = field(default_factory=dict)
    waiting_by_priority: dict[int, int] = field(default_factory=dict)
    # Steps the scheduler gave to a more urgent class's arrival alone (engine/scheduler.py).
    num_urgent_steps: int = 0
