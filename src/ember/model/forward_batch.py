"""What one model step computes: the flattened tokens of several sequences over a paged KV cache.

The engine builds a `ForwardBatch`; a backend (NumPy or CUDA) executes it. A batch mixes
prefill chunks (many tokens of one sequence) and decode tokens (one token per sequence).

A token id may be a placeholder for a token the previous step sampled on the device and the host
has not seen yet (asynchronous scheduling): `previous_token(row)` stands for row `row` of the
previous step's sampled ids. Only a `DeviceSamplingBackend` is given such batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Int32Array = npt.NDArray[np.int32]

# Ids of -2 and below are placeholders (-1 is the padding id, a row of zeros).
_PLACEHOLDER_BASE = -2


def previous_token(row: int) -> int:
    """The placeholder id for row `row` of the previous step's sampled token ids."""
    return _PLACEHOLDER_BASE - row


def resolve_previous_tokens(token_ids: Int32Array, previous: Int32Array) -> Int32Array:
    """`token_ids` with each placeholder replaced by the previous step's sampled id (as the
    CUDA embedding kernel does on the device)."""
    placeholders = token_ids <= _PLACEHOLDER_BASE
    if not placeholders.any():
        return token_ids
    resolved = token_ids.copy()
    resolved[placeholders] = previous[_PLACEHOLDER_BASE - token_ids[placeholders]]
    return resolved


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    # Per token (T tokens, sequences laid out one after another).
    token_ids: Int32Array  # [T]
    positions: Int32Array  # [T] absolute position of each token in its sequence
    slot_mapping: Int32Array  # [T] KV-cache slot (block_id * block_size + offset) to write
    # Per sequence (S sequences).
    query_starts: Int32Array  # [S + 1] offsets of each sequence's tokens in the flat arrays
    context_lens: Int32Array  # [S] tokens in the cache for the sequence once this step is done
    block_tables: Int32Array  # [S, max_blocks] block ids, padded with -1
    # Flat token rows whose next-token logits the engine needs (usually each sequence's last).
    logits_indices: Int32Array  # [L]

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])

    @property
    def query_lens(self) -> Int32Array:
        return np.diff(self.query_starts).astype(np.int32)
