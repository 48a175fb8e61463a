"""Execute a scheduled batch: build the backend's ForwardBatch, run it, sample the tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ember.engine.sampler import Sampler
from ember.engine.scheduler import ScheduledBatch
from ember.engine.sequence import Sequence, TokenLogprob
from ember.model.backend import DeviceSamplingBackend, ForwardBackend, SamplingBatch
from ember.model.forward_batch import ForwardBatch


@dataclass(frozen=True, slots=True)
class SampledToken:
    seq: Sequence
    token_id: int
    logprob: TokenLogprob | None


class ModelRunner:
    def __init__(self, backend: ForwardBackend, block_size: int) -> None:
        self.backend = backend
        self.block_size = block_size
        self.sampler = Sampler()
        # Chosen once: a backend that samples on the device returns token ids, not logits.
        self.device_sampling: DeviceSamplingBackend | None = (
            backend if isinstance(backend, DeviceSamplingBackend) else None
        )

    def run(self, batch: ScheduledBatch) -> list[SampledToken]:
        """Compute the batch; sequences whose prompt is now fully computed get a token."""
        forward_batch, sampling_seqs = self.prepare(batch)
        if self.device_sampling is not None:
            return self._run_sampling_on_device(self.device_sampling, forward_batch, sampling_seqs)
        logits = self.backend.forward(forward_batch)
        if not sampling_seqs:
            return []
        picks = self.sampler.sample(logits, sampling_seqs)
        return [
            SampledToken(seq, tok, lp) for seq, (tok, lp) in zip(sampling_seqs, picks, strict=True)
        ]

    def _run_sampling_on_device(
        self, backend: DeviceSamplingBackend, batch: ForwardBatch, seqs: list[Sequence]
    ) -> list[SampledToken]:
        sampling = sampling_batch(seqs)
        step = backend.forward_sample(batch, sampling)
        results = [
            SampledToken(seq, int(tok), None)
            for seq, tok in zip(seqs, step.token_ids.tolist(), strict=True)
        ]
        if step.host_logits is not None:
            # Penalties and logprobs need the whole distribution: the host sampler redoes these
            # rows, so each sequence's draws depend on its own parameters only.
            rows = sampling.host_rows.tolist()
            host_seqs = [seqs[row] for row in rows]
            picks = self.sampler.sample(step.host_logits, host_seqs)
            for row, seq, (tok, lp) in zip(rows, host_seqs, picks, strict=True):
                results[row] = SampledToken(seq, tok, lp)
        return results

    def prepare(self, batch: ScheduledBatch) -> tuple[ForwardBatch, list[Sequence]]:
        bs = self.block_size
        token_ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        query_starts = [0]
        context_lens: list[int] = []
        logits_indices: list[int] = []
        sampling_seqs: list[Sequence] = []
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        block_tables = np.full((len(batch.seqs), max_blocks), -1, dtype=np.int32)
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            token_ids.extend(seq.token_ids[start : start + n])
            pos = np.arange(start, start + n, dtype=np.int32)
            table = np.asarray(seq.block_table, dtype=np.int32)
            block_tables[row, : table.shape[0]] = table
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            query_starts.append(query_starts[-1] + n)
            context_lens.append(start + n)
            if start + n == seq.num_tokens:
                logits_indices.append(query_starts[-1] - 1)
                sampling_seqs.append(seq)
        forward_batch = ForwardBatch(
            token_ids=np.asarray(token_ids, dtype=np.int32),
            positions=np.concatenate(positions),
            slot_mapping=np.concatenate(slots).astype(np.int32),
            query_starts=np.asarray(query_starts, dtype=np.int32),
            context_lens=np.asarray(context_lens, dtype=np.int32),
            block_tables=block_tables,
            logits_indices=np.asarray(logits_indices, dtype=np.int32),
        )
        return forward_batch, sampling_seqs


def sampling_batch(seqs: list[Sequence]) -> SamplingBatch:
    """Per-row sampling parameters for a device sampler; greedy rows get temperature 0."""
    params = [seq.params for seq in seqs]
    return SamplingBatch(
        temperature=np.array([0.0 if p.greedy else p.temperature for p in params], np.float32),
        top_k=np.array([p.top_k for p in params], np.int32),
        top_p=np.array([p.top_p for p in params], np.float32),
        min_p=np.array([p.min_p for p in params], np.float32),
        seeds=np.array([seq.seed for seq in seqs], np.uint64),
        steps=np.array([seq.num_output_tokens for seq in seqs], np.int32),
        host_rows=np.array(
            [i for i, p in enumerate(params) if p.has_penalties or p.logprobs is not None],
            np.int32,
        ),
    )
