"""Turn next-token logits into tokens, one row per sequence, following its SamplingParams.

Order (as vLLM): the structured output's mask of allowed tokens, penalties, temperature,
top-k, top-p, min-p, then a draw from the sequence's own generator, so a seeded request gives
the same tokens whatever it is batched with. Logprobs are those of the model's raw
distribution, before any of the processing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ember.engine.grammar import Masks, allowed_tokens
from ember.engine.sequence import Sequence, TokenLogprob

F32 = npt.NDArray[np.float32]


def log_softmax(logits: F32) -> F32:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: F32 = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def apply_penalties(logits: F32, seq: Sequence) -> None:
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(seq.token_ids, dtype=np.int64))
        values = logits[seen]
        logits[seen] = np.where(
            values > 0, values / p.repetition_penalty, values * p.repetition_penalty
        )
    if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and seq.output_counts:
        ids = np.fromiter(seq.output_counts.keys(), dtype=np.int64)
        counts = np.fromiter(seq.output_counts.values(), dtype=np.float32)
        logits[ids] -= p.frequency_penalty * counts + p.presence_penalty


def filtered_probs(logits: F32, seq: Sequence) -> tuple[npt.NDArray[np.int64], F32]:
    """Candidate token ids and their (unnormalized) probabilities after top-k/top-p/min-p."""
    p = seq.params
    scaled = logits / np.float32(p.temperature)
    if 0 < p.top_k < scaled.shape[0]:
        ids = np.argpartition(scaled, -p.top_k)[-p.top_k :]
    else:
        ids = np.arange(scaled.shape[0], dtype=np.int64)
    values = scaled[ids]
    order = np.argsort(-values, kind="stable")
    ids, values = ids[order], values[order]
    probs: F32 = np.exp(values - values[0])
    if p.top_p < 1.0:
        cumulative = np.cumsum(probs)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = int(np.searchsorted(cumulative, p.top_p * cumulative[-1])) + 1
        ids, probs = ids[:keep], probs[:keep]
    if p.min_p > 0.0:
        keep = int(np.count_nonzero(probs >= p.min_p))  # probs[0] == 1 is the max
        ids, probs = ids[: max(keep, 1)], probs[: max(keep, 1)]
    return ids, probs


def sample_row(logits: F32, seq: Sequence) -> int:
    if seq.params.has_penalties:
        logits = logits.copy()
        apply_penalties(logits, seq)
    if seq.params.greedy:
        return int(np.argmax(logits))
    ids, probs = filtered_probs(logits, seq)
    cumulative = np.cumsum(probs, dtype=np.float64)
    draw = seq.rng.random() * cumulative[-1]
    index = min(int(np.searchsorted(cumulative, draw, side="right")), len(ids) - 1)
    return int(ids[index])


def token_logprob(logprobs: F32, token_id: int, top_n: int) -> TokenLogprob:
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(logprobs, -top_n)[-top_n:]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = tuple((int(i), float(logprobs[i])) for i in best)
    return TokenLogprob(token_id=token_id, logprob=float(logprobs[token_id]), top=top)


class Sampler:
    def sample(
        self,
        logits: F32,
        seqs: list[Sequence],
        masks: Masks | None = None,
        mask_rows: list[int] | None = None,
    ) -> list[tuple[int, TokenLogprob | None]]:
        """One token per row of `logits` (row i belongs to seqs[i]); a row whose `mask_rows`
        entry is m >= 0 samples only among the tokens `masks[m]` allows."""
        results: list[tuple[int, TokenLogprob | None]] = []
        masked = mask_rows if masks is not None and mask_rows is not None else [-1] * len(seqs)
        plain_greedy = [
            s.params.greedy and not s.params.has_penalties and m < 0
            for s, m in zip(seqs, masked, strict=True)
        ]
        argmax: list[int] = logits.argmax(axis=-1).tolist() if any(plain_greedy) else []
        for row, seq in enumerate(seqs):
            if plain_greedy[row]:
                token_id = argmax[row]
            elif masked[row] >= 0:
                assert masks is not None
                row_logits = np.where(
                    allowed_tokens(masks[masked[row]], logits.shape[1]),
                    logits[row],
                    np.float32(-np.inf),
                )
                token_id = sample_row(row_logits, seq)
            else:
                token_id = sample_row(logits[row], seq)
            logprob = None
            if seq.params.logprobs is not None:
                logprob = token_logprob(log_softmax(logits[row]), token_id, seq.params.logprobs)
            results.append((token_id, logprob))
        return results
