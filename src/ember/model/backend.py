"""The interface every compute backend implements; the engine talks only to this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ember.model.config import ModelConfig
    from ember.model.forward_batch import ForwardBatch


class ForwardBackend(Protocol):
    """Runs forward passes over a paged KV cache that the backend owns."""

    @property
    def config(self) -> ModelConfig: ...

    @property
    def device_name(self) -> str: ...

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes across all layers (used to size the pool)."""
        ...

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """Preallocate the KV pool; block ids in later batches index into it."""
        ...

    def forward(self, batch: ForwardBatch) -> npt.NDArray[np.float32]:
        """Write the batch's K/V into the cache and return logits [len(logits_indices), vocab]."""
        ...
