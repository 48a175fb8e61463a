"""The interface every compute backend implements; the engine talks only to this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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

    def default_kv_cache_bytes(self, max_tokens: int) -> int:
        """The KV cache size to use when the engine is not told one; `max_tokens` is the most
        that could ever be cached at once (sequences x context)."""
        ...

    def default_prefill_tokens_per_step(self) -> int | None:
        """Prompt tokens a step should prefill at most when the engine is not told; None: no
        limit beyond the step's token budget."""
        ...

    def reserve(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int) -> None:
        """Preallocate per-step buffers for batches up to these sizes (before the first step)."""
        ...

    def set_batch_invariant(self, on: bool) -> None:
        """Compute every row in an order that depends only on the row's own data (its tokens,
        positions, context), never on the batch around it (docs/batch_invariance.md); called
        once, before the first step. A backend that is always so accepts either value."""
        ...

    def forward(self, batch: ForwardBatch) -> npt.NDArray[np.float32]:
        """Write the batch's K/V into the cache and return logits [len(logits_indices), vocab]."""
        ...


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """How to pick the next token of each logits row, for a backend that samples on device.

    Rows with temperature 0 are greedy. `seeds` and `steps` (the sequence's count of generated
    tokens) make a draw depend only on the sequence, never on what it is batched with.
    `host_rows` lists the rows whose logits must also come back to the host (for penalties or
    logprobs, which the engine's own sampler applies). A row whose `mask_rows` entry is m >= 0
    samples only among the tokens `masks[m]` allows (bit i % 32 of int32 word i // 32 set:
    token i allowed); the logits that come back are unmasked.
    """

    temperature: npt.NDArray[np.float32]
    top_k: npt.NDArray[np.int32]
    top_p: npt.NDArray[np.float32]
    min_p: npt.NDArray[np.float32]
    seeds: npt.NDArray[np.uint64]
    steps: npt.NDArray[np.int32]
    host_rows: npt.NDArray[np.int32]
    masks: npt.NDArray[np.int32] | None = None  # [constrained rows, (vocab + 31) // 32]
    mask_rows: npt.NDArray[np.int32] | None = None  # [rows]: -1, or the row of `masks`


@dataclass(frozen=True, slots=True)
class SampledStep:
    token_ids: npt.NDArray[np.int32]  # [L], one per logits row
    host_logits: npt.NDArray[np.float32] | None  # [len(host_rows), vocab]


class PendingStep(Protocol):
    """A launched step whose sampled ids the host has not taken yet."""

    def wait(self) -> SampledStep:
        """Block until the step is done; its token ids (and host rows' logits)."""
        ...


@dataclass(frozen=True, slots=True)
class CompletedStep:
    """The `PendingStep` of a backend that computes a step as it is launched."""

    result: SampledStep

    def wait(self) -> SampledStep:
        return self.result


class StepAwaitingMasks(Protocol):
    """A launched step whose forward pass is queued and whose sampling waits for token masks."""

    def sample(self, masks: npt.NDArray[np.int32]) -> PendingStep:
        """Queue the step's sampling with `masks` (`SamplingBatch.masks`, which its
        `mask_rows` name); the step is then a `PendingStep` like `launch_sample`'s."""
        ...


@runtime_checkable
class DeviceSamplingBackend(ForwardBackend, Protocol):
    """A backend that samples where the logits are, so only token ids cross to the host.

    `launch_sample` queues a step and returns without waiting for it, so the engine can prepare
    the next step while this one runs. The next step's batch may then name this step's sampled
    ids by placeholder (`forward_batch.previous_token`). The engine waits for each step before
    it launches the one after next, and waits at once for a step with host rows.

    `launch_forward` is `launch_sample` for a step with constrained rows whose masks are not
    known yet (`sampling.mask_rows` set, `sampling.masks` None): a constrained row's mask needs
    the token the previous step samples, which the host takes only after that step. The forward
    pass is queued at once and the sampling when `sample` brings the masks, so the host computes
    them while the device runs the forward pass (the step waits only for a late mask).
    """

    def launch_sample(self, batch: ForwardBatch, sampling: SamplingBatch) -> PendingStep: ...

    def launch_forward(self, batch: ForwardBatch, sampling: SamplingBatch) -> StepAwaitingMasks: ...
