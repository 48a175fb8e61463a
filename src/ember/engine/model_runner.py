"""Execute a scheduled batch: build the backend's ForwardBatch, run it, sample the tokens.

A step is launched, then collected: on a backend that samples on the device, the engine
prepares and launches the next step between the two, so the host's work overlaps the device's.
A step with constrained rows whose tokens are in flight is launched without their masks (its
forward pass only: `DeviceSamplingBackend.launch_forward`); the engine collects the previous
step, whose tokens the matchers then take, and `sample_constrained` computes the masks and
queues the sampling, while the device runs the forward pass.

A step's per-token inputs are built with a handful of vectorised NumPy operations over the
whole batch (positions, cache slots, block tables gathered from the pool's `BlockTables`);
the only per-sequence Python work is reading a few integers from each sequence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ember.engine.block_tables import BlockTables
from ember.engine.grammar import GrammarCompiler, Masks
from ember.engine.mask_workers import MaskWorkers
from ember.engine.sampler import Sampler
from ember.engine.scheduler import ScheduledBatch
from ember.engine.sequence import Sequence, TokenLogprob
from ember.model.backend import (
    DeviceSamplingBackend,
    ForwardBackend,
    PendingStep,
    SamplingBatch,
    StepAwaitingMasks,
)
from ember.model.forward_batch import ForwardBatch, previous_token

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class SampledTokens:
    """One new token for each of `seqs` (the batch's sequences whose prompt is computed)."""

    seqs: list[Sequence]
    token_ids: list[int]
    # Per sequence, its logprob entry if it asked for logprobs; None: no sequence did.
    logprobs: list[TokenLogprob | None] | None

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(slots=True)
class LaunchedStep:
    """A step whose work is queued (or, on a host-sampling backend, done) but whose tokens the
    engine has not taken: `ModelRunner.collect` takes them."""

    batch: ScheduledBatch
    seqs: list[Sequence]  # the sequences that get a token, one per sampled row
    # A device-sampling backend's step; None on a host-sampling backend, and until
    # `ModelRunner.sample_constrained` queues the sampling of a step `awaiting_masks`.
    pending: PendingStep | None
    sampling: SamplingBatch | None
    logits: F32 | None  # a host-sampling backend's logits, one row per sequence of `seqs`
    token_masks: TokenMasks | None  # the constrained rows' masks; None: no row is
    # Its sequences count its tokens as pending: the next step may be launched before this
    # one is collected, naming them by placeholder.
    asynchronous: bool
    # Its forward pass is queued; its sampling waits for the constrained rows' masks.
    awaiting_masks: StepAwaitingMasks | None = None


@dataclass(frozen=True, slots=True)
class TokenMasks:
    """A step's masks of allowed tokens: row i of the step samples among `masks[rows[i]]`'s
    tokens, or among all where rows[i] is -1."""

    masks: Masks  # int32 [constrained rows, mask words]
    rows: npt.NDArray[np.int32]  # [sampled rows]


def mask_rows(seqs: list[Sequence]) -> npt.NDArray[np.int32] | None:
    """Per sampled row, its row of the step's masks (-1: unconstrained); None: no row is."""
    constrained = [row for row, seq in enumerate(seqs) if seq.grammar is not None]
    if not constrained:
        return None
    rows = np.full(len(seqs), -1, np.int32)
    rows[constrained] = np.arange(len(constrained), dtype=np.int32)
    return rows


def fill_masks(
    seqs: list[Sequence],
    rows: npt.NDArray[np.int32],
    grammars: GrammarCompiler,
    workers: MaskWorkers | None,
) -> Masks:
    """The masks `rows` (`mask_rows(seqs)`) name, of the sequences' matchers now. A sequence
    that finished since the step was launched (the previous step's token ended it) gets every
    token: its row's token is dropped, and its matcher may be done."""
    constrained = np.flatnonzero(rows >= 0).tolist()
    masks = np.empty((len(constrained), grammars.mask_words), np.int32)
    live = [i for i, row in enumerate(constrained) if not seqs[row].is_finished]
    if len(live) < len(constrained):
        masks[:] = -1
    if not live:
        return masks
    out = (
        masks if len(live) == len(constrained) else np.empty((len(live), masks.shape[1]), np.int32)
    )
    live_seqs = [seqs[constrained[i]] for i in live]
    if workers is not None:
        workers.fill(live_seqs, out)
    else:
        grammars.fill_masks([seq.grammar for seq in live_seqs], out)  # type: ignore[misc]
    if out is not masks:
        masks[live] = out
    return masks


class ModelRunner:
    def __init__(
        self,
        backend: ForwardBackend,
        block_size: int,
        tables: BlockTables,
        grammars: GrammarCompiler | None = None,
        mask_workers: MaskWorkers | None = None,
    ) -> None:
        self.backend = backend
        self.block_size = block_size
        self.tables = tables
        self.grammars = grammars
        self.mask_workers = mask_workers
        self.sampler = Sampler()
        # Chosen once: a backend that samples on the device returns token ids, not logits.
        self.device_sampling: DeviceSamplingBackend | None = (
            backend if isinstance(backend, DeviceSamplingBackend) else None
        )

    def launch(self, batch: ScheduledBatch, asynchronous: bool) -> LaunchedStep:
        """Start computing the batch (sequences whose prompt is then fully computed get a token,
        which `collect` returns). With `asynchronous`, on a device-sampling backend and when
        no row needs the host's sampler, return before the step is done: its sequences' new
        tokens become pending (`Sequence.num_pending`) until `collect`. Such a step with
        constrained rows is only started (`awaiting_masks`): `sample_constrained` finishes its
        launch once the previous step's tokens are taken."""
        forward_batch, seqs = self.prepare(batch)
        device = self.device_sampling
        constrained = batch.constrained and self.grammars is not None
        rows = mask_rows(seqs) if constrained else None
        if device is None:
            masks = None if rows is None else self._masks(seqs, rows)
            logits = self.backend.forward(forward_batch)
            return LaunchedStep(batch, seqs, None, None, logits, masks, False)
        sampling = sampling_batch(seqs, rows)
        # Overlapping steps, a constrained row's token from the step in flight is not known
        # yet: its mask waits for `sample_constrained`, whether this step overlaps the next
        # or (with host rows) is collected at once.
        defer = rows is not None and asynchronous
        asynchronous = asynchronous and bool(seqs) and not sampling.host_rows.shape[0]
        if asynchronous:
            for row, seq in enumerate(seqs):
                seq.num_pending += 1
                seq.pending_row = row
        if defer:
            awaiting = device.launch_forward(forward_batch, sampling)
            return LaunchedStep(batch, seqs, None, sampling, None, None, asynchronous, awaiting)
        masks = None
        if rows is not None:
            masks = self._masks(seqs, rows)
            sampling = dataclasses.replace(sampling, masks=masks.masks)
        pending = device.launch_sample(forward_batch, sampling)
        return LaunchedStep(batch, seqs, pending, sampling, None, masks, asynchronous)

    def sample_constrained(self, step: LaunchedStep) -> None:
        """Queue the sampling of a step launched `awaiting_masks`, with its constrained rows'
        masks as their matchers are now (they have taken every token before this step's)."""
        awaiting, sampling = step.awaiting_masks, step.sampling
        assert awaiting is not None and sampling is not None and sampling.mask_rows is not None
        masks = self._masks(step.seqs, sampling.mask_rows)
        step.pending = awaiting.sample(masks.masks)
        step.token_masks = masks
        step.awaiting_masks = None

    def _masks(self, seqs: list[Sequence], rows: npt.NDArray[np.int32]) -> TokenMasks:
        """The masks of `seqs`' constrained rows (`rows`: `mask_rows(seqs)`) as their matchers
        are now, from the mask workers where the engine has them."""
        assert self.grammars is not None
        return TokenMasks(fill_masks(seqs, rows, self.grammars, self.mask_workers), rows)

    def collect(self, step: LaunchedStep) -> SampledTokens:
        """Wait for the step; one token (and its logprob entry, if asked for) per sequence."""
        seqs = step.seqs
        if step.asynchronous:
            for seq in seqs:
                seq.num_pending -= 1
        if step.pending is None:
            if not seqs:
                return SampledTokens([], [], None)
            assert step.logits is not None
            masks = step.token_masks
            if masks is None:
                return _columns(seqs, self.sampler.sample(step.logits, seqs))
            picks = self.sampler.sample(step.logits, seqs, masks.masks, masks.rows.tolist())
            return _columns(seqs, picks)
        assert step.sampling is not None and step.awaiting_masks is None
        sampled = step.pending.wait()
        token_ids: list[int] = sampled.token_ids.tolist()
        logprobs: list[TokenLogprob | None] | None = None
        if sampled.host_logits is not None:
            # Penalties and logprobs need the whole distribution: the host sampler redoes these
            # rows, so each sequence's draws depend on its own parameters only.
            rows = step.sampling.host_rows.tolist()
            masks = step.token_masks
            picks = self.sampler.sample(
                sampled.host_logits,
                [seqs[row] for row in rows],
                None if masks is None else masks.masks,
                None if masks is None else masks.rows[rows].tolist(),
            )
            for row, (token_id, logprob) in zip(rows, picks, strict=True):
                token_ids[row] = token_id
                if logprob is not None:
                    if logprobs is None:
                        logprobs = [None] * len(seqs)
                    logprobs[row] = logprob
        return SampledTokens(seqs, token_ids, logprobs)

    def prepare(self, batch: ScheduledBatch) -> tuple[ForwardBatch, list[Sequence]]:
        token_ids: list[int] = []
        starts: list[int] = []
        rows: list[int] = []
        sampled_rows: list[int] = []
        sampling_seqs: list[Sequence] = []
        for index, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            ids = seq.token_ids
            if start == len(ids):  # the token the previous step sampled, still on the device
                token_ids.append(previous_token(seq.pending_row))
            elif n == 1:
                token_ids.append(ids[start])
            else:
                token_ids.extend(ids[start : start + n])
            starts.append(start)
            rows.append(seq.table_row)
            if start + n == len(ids) + seq.num_pending:
                sampled_rows.append(index)
                sampling_seqs.append(seq)
        num_seqs, num_tokens = len(starts), len(token_ids)
        start_arr = np.array(starts, np.int32)
        row_arr = np.array(rows, np.intp)
        if num_tokens == num_seqs:  # decode only: one token per sequence
            query_starts = np.arange(num_seqs + 1, dtype=np.int32)
            positions, token_rows = start_arr, row_arr
            context_lens = start_arr + 1
        else:
            counts = np.array(batch.num_new_tokens, np.int32)
            query_starts = np.zeros(num_seqs + 1, np.int32)
            np.cumsum(counts, out=query_starts[1:])
            token_rows = np.repeat(row_arr, counts)
            offsets = np.repeat(query_starts[:-1] - start_arr, counts)
            positions = np.arange(num_tokens, dtype=np.int32) - offsets
            context_lens = start_arr + counts
        last_rows = query_starts[1:] - 1
        if len(sampled_rows) < num_seqs:
            last_rows = last_rows[np.array(sampled_rows, np.intp)]
        bs = self.block_size
        blocks = self.tables.array[token_rows, positions // bs]
        forward_batch = ForwardBatch(
            token_ids=np.array(token_ids, np.int32),
            positions=positions,
            slot_mapping=blocks * bs + positions % bs,
            query_starts=query_starts,
            context_lens=context_lens,
            block_tables=self.tables.gather(row_arr),
            logits_indices=last_rows,
        )
        return forward_batch, sampling_seqs


def _columns(seqs: list[Sequence], picks: list[tuple[int, TokenLogprob | None]]) -> SampledTokens:
    token_ids = [token_id for token_id, _ in picks]
    logprobs = [logprob for _, logprob in picks]
    has_logprobs = any(logprob is not None for logprob in logprobs)
    return SampledTokens(seqs, token_ids, logprobs if has_logprobs else None)


def sampling_batch(
    seqs: list[Sequence], mask_rows: npt.NDArray[np.int32] | None = None
) -> SamplingBatch:
    """Per-row sampling parameters for a device sampler; greedy rows get temperature 0.
    `mask_rows`: each row's row of the step's masks (`mask_rows(seqs)`), which the caller adds
    (`SamplingBatch.masks`) or sends later (`StepAwaitingMasks.sample`)."""
    if not seqs:
        temperature, top_k, top_p, min_p, seeds, host = (), (), (), (), (), ()
    else:
        temperature, top_k, top_p, min_p, seeds, host = zip(
            *[seq.sampling_row for seq in seqs], strict=True
        )
    steps = [len(seq.token_ids) + seq.num_pending - seq.num_prompt_tokens for seq in seqs]
    return SamplingBatch(
        temperature=np.array(temperature, np.float32),
        top_k=np.array(top_k, np.int32),
        top_p=np.array(top_p, np.float32),
        min_p=np.array(min_p, np.float32),
        seeds=np.array(seeds, np.uint64),
        steps=np.array(steps, np.int32),
        host_rows=np.flatnonzero(np.array(host, np.bool_)).astype(np.int32),
        mask_rows=mask_rows,
    )
