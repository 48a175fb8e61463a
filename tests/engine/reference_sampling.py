"""The CUDA backend's engine-facing behaviour on the CPU: the real NumPy forward pass, sampling
as sampling.cu does (its NumPy model), and placeholder token ids resolved as embedding.cu does."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.kernels.sampling import row_params
from ember.kernels.sampling_reference import reference_sample
from ember.model.backend import CompletedStep, PendingStep, SampledStep, SamplingBatch
from ember.model.forward_batch import ForwardBatch, resolve_previous_tokens
from ember.model.loader import LoadedModel
from ember.model.numpy_llama import NumpyLlama


class ReferenceSamplingLlama(NumpyLlama):
    """NumpyLlama that samples as sampling.cu does, returning logits only for host rows, and
    reads placeholder token ids from the previous step's sampled ids as embedding.cu does."""

    def __init__(self, inner: NumpyLlama) -> None:
        super().__init__(inner.config, inner.weights)
        self.calls: list[SamplingBatch] = []
        self.placeholders = 0  # tokens taken from the previous step's ids
        self.deferred = 0  # steps launched by `launch_forward` (their masks came later)
        self.awaiting = 0  # of those, the ones whose sampling is not queued yet
        self.tokens = 0
        self._previous: npt.NDArray[np.int32] = np.zeros(0, np.int32)

    def launch_sample(self, batch: ForwardBatch, sampling: SamplingBatch) -> PendingStep:
        return self._forward(batch, sampling).sample(sampling.masks)

    def launch_forward(self, batch: ForwardBatch, sampling: SamplingBatch) -> ReferenceForward:
        """The forward pass now (its placeholders read the previous step's ids, which must be
        sampled by then, as the device's stream orders it); the sampling at `sample`."""
        if sampling.masks is not None or sampling.mask_rows is None:
            raise AssertionError("launch_forward is for steps whose masks come later")
        self.deferred += 1
        self.awaiting += 1
        step = self._forward(batch, sampling)
        step.deferred = True
        return step

    def _forward(self, batch: ForwardBatch, sampling: SamplingBatch) -> ReferenceForward:
        self.placeholders += int((batch.token_ids <= -2).sum())
        self.tokens += batch.num_tokens
        token_ids = resolve_previous_tokens(batch.token_ids, self._previous)
        logits = self.forward(dataclasses.replace(batch, token_ids=token_ids))
        return ReferenceForward(self, logits, sampling)

    def sample(self, logits: npt.NDArray[np.float32], sampling: SamplingBatch) -> CompletedStep:
        self.calls.append(sampling)
        params = row_params(
            sampling.temperature,
            sampling.top_k,
            sampling.top_p,
            sampling.min_p,
            sampling.seeds,
            sampling.steps,
            -1 if sampling.mask_rows is None else sampling.mask_rows,
        )
        ids: npt.NDArray[np.int32] = reference_sample(logits, params, sampling.masks)
        self._previous = ids
        host = logits[sampling.host_rows] if sampling.host_rows.shape[0] else None
        return CompletedStep(SampledStep(token_ids=ids, host_logits=host))


class ReferenceForward:
    """A step whose forward pass is done and whose sampling waits for its masks."""

    def __init__(
        self,
        backend: ReferenceSamplingLlama,
        logits: npt.NDArray[np.float32],
        sampling: SamplingBatch,
    ) -> None:
        self._backend = backend
        self._logits = logits
        self._sampling = sampling
        self.deferred = False  # launched by `launch_forward`

    def sample(self, masks: npt.NDArray[np.int32] | None) -> PendingStep:
        sampling = self._sampling
        if (masks is None) != (sampling.mask_rows is None):
            raise AssertionError("a step's masks and its rows' mask_rows must come together")
        if self.deferred:
            self._backend.awaiting -= 1
        return self._backend.sample(self._logits, dataclasses.replace(sampling, masks=masks))


def engine_over(model: LoadedModel, **options: object) -> tuple[LLMEngine, ReferenceSamplingLlama]:
    """An engine over the reference backend (EngineConfig `options` over small defaults)."""
    assert isinstance(model.backend, NumpyLlama)
    backend = ReferenceSamplingLlama(model.backend)
    loaded = LoadedModel(
        path=model.path,
        config=model.config,
        tokenizer=model.tokenizer,
        chat_template=model.chat_template,
        backend=backend,
        load_seconds=0.0,
    )
    settings: dict[str, object] = {"num_kv_blocks": 64, "max_num_seqs": 4, "show_progress": False}
    config = EngineConfig(**(settings | options))  # type: ignore[arg-type]
    return LLMEngine(config, model=loaded), backend
