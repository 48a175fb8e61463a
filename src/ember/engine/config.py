"""How an engine runs: built from the command line (or `LLM(...)`) and passed down unchanged.

Its own module, importing nothing heavy, so that the command line can read its defaults
without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str | None = None
    device: str = "cpu"
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 1024
    # Prompt tokens a step prefills at most (decodes are not counted); None: the backend's
    # choice, small where prefill is slow (the CPU) so that every stream's step stays short.
    max_prefill_tokens_per_step: int | None = None
    num_kv_blocks: int | None = None  # None: as many as kv_cache_memory_bytes holds
    kv_cache_memory_bytes: int | None = None  # None: the backend's default for these limits
    enable_prefix_caching: bool = True
    seed: int = 0
    show_progress: bool = True
    # False: outputs carry token ids only (no text, no stop strings), for a caller that
    # detokenizes elsewhere, e.g. the HTTP server in front of an engine worker process.
    detokenize: bool = True
    # On a backend that samples on the device: launch each step before taking the previous
    # step's tokens, so the host's work (scheduling, inputs, outputs) overlaps the device's.
    # A step's outputs then come from the next `step()` call.
    async_scheduling: bool = True
    # The GPU computes each row with reductions whose order depends only on the row (its
    # tokens, positions, context), not on the batch: greedy and seeded outputs are then the
    # same bits alone and in any batch, at a throughput cost (docs/batch_invariance.md).
    batch_invariant: bool = False
    # A priority with requests waiting and none admitted for this many steps goes first at the
    # next room: lower service classes wait behind higher ones, never forever.
    starvation_steps: int = 100
    # Processes that compute structured outputs' token masks beside the engine's thread
    # (engine/mask_workers.py). None: the CPUs this process may use less one, at most 8, none
    # on one CPU; 0: masks on the engine's threads only (engine/grammar.py).
    mask_workers: int | None = None
    # A constrained sequence whose grammar forces the next tokens (a JSON key, the punctuation
    # between fields) takes them without sampling, and one step computes them all: its output
    # is then the forced text's canonical tokens (engine/forced_tokens.py).
    jump_forward: bool = True
