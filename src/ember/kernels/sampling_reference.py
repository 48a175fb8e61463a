"""NumPy model of sampling.cu, for its tests: the candidate set by the CPU sampler's sort-based
rule (ember/engine/sampler.py's filtered_probs, restated here since kernels sit below the
engine), and the kernel's counter-based Gumbel noise, bit for bit up to the two logarithms.

Where the two can still differ: the kernel sums top-p mass in another order than this float32
cumsum, so a token whose cumulative mass lies within rounding of top_p * total can be in one
set and not the other; its float32 logs may round apart from NumPy's by an ulp, which matters
only for two candidates with nearly equal scores; and it keeps every token tied at a threshold.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

GOLDEN_GAMMA: Final = np.uint64(0x9E3779B97F4A7C15)
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_HALF_RANGE: Final = 1 << 23

U64 = npt.NDArray[np.uint64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def mix64(z: U64) -> U64:
    """SplitMix64's output function, elementwise; uint64 products wrap as on the device."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: U64 = z ^ (z >> np.uint64(31))
    return out


def stream_key(seed: int, step: int) -> np.uint64:
    """The SplitMix64 stream of one (seed, step); the step is taken as its 32-bit pattern."""
    step_u64 = np.array([(step & 0xFFFFFFFF) + 1], dtype=np.uint64)
    with np.errstate(over="ignore"):
        salt = mix64(step_u64 * GOLDEN_GAMMA)
    key: np.uint64 = mix64(np.array([seed], dtype=np.uint64) ^ salt)[0]
    return key


def gumbel_noise(seed: int, step: int, ids: npt.ArrayLike) -> F32:
    """Gumbel noise of tokens `ids` for (seed, step): -log(-log(u)) with u from the top 24 bits
    of the hash, u = (k + 0.5) / 2^24 below 2^23 and k / 2^24 above (exact in float32)."""
    index = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(stream_key(seed, step) + (index + np.uint64(1)) * GOLDEN_GAMMA)
    k = (h >> np.uint64(40)).astype(np.uint32)
    offset = np.where(k < _HALF_RANGE, np.float32(0.5), np.float32(0.0))
    u = (k.astype(np.float32) + offset) * np.float32(2.0**-24)
    noise: F32 = -np.log(-np.log(u))
    return noise


def candidate_ids(z: F32, top_k: int, top_p: float, min_p: float) -> I64:
    """Token ids left after top-k, top-p and min-p on scaled logits z, largest first: the CPU
    sampler's filtered_probs rule."""
    if 0 < top_k < z.shape[0]:
        ids = np.argpartition(z, -top_k)[-top_k:]
    else:
        ids = np.arange(z.shape[0], dtype=np.int64)
    values = z[ids]
    order = np.argsort(-values, kind="stable")
    ids, values = ids[order], values[order]
    probs = np.exp(values - values[0])
    if top_p < 1.0:
        cumulative = np.cumsum(probs)
        keep = int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1
        ids, probs = ids[:keep], probs[:keep]
    if min_p > 0.0:
        keep = max(int(np.count_nonzero(probs >= min_p)), 1)
        ids = ids[:keep]
    out: I64 = ids.astype(np.int64)
    return out


def scores(logits_row: F32, params_row: Any) -> tuple[I64, F32]:
    """Candidate ids of one sampled (not greedy) row, ascending, and their z + Gumbel noise."""
    z = logits_row / np.float32(params_row["temperature"])
    ids = np.sort(
        candidate_ids(
            z, int(params_row["top_k"]), float(params_row["top_p"]), float(params_row["min_p"])
        )
    )
    seed = int(params_row["seed_lo"]) | int(params_row["seed_hi"]) << 32
    noisy: F32 = z[ids] + gumbel_noise(seed, int(params_row["step"]), ids)
    return ids, noisy


def reference_sample(
    logits: F32, params: npt.NDArray[Any], masks: npt.NDArray[np.int32] | None = None
) -> npt.NDArray[np.int32]:
    """The token sampling.cu draws for each row of logits [R, V] with params [R]
    (ROW_PARAMS_DTYPE): argmax where temperature <= 0, else the Gumbel-max winner among the
    candidates (ties to the lowest id, as numpy.argmax). A row whose `mask_row` is m >= 0 sees
    the tokens `masks[m]` leaves out as -inf."""
    out = np.empty(logits.shape[0], dtype=np.int32)
    vocab = logits.shape[1]
    for r, row in enumerate(params[: logits.shape[0]]):
        values = logits[r]
        if masks is not None and row["mask_row"] >= 0:
            bits = np.unpackbits(masks[row["mask_row"]].view(np.uint8), bitorder="little")
            values = np.where(bits[:vocab].astype(np.bool_), values, np.float32(-np.inf))
        if not row["temperature"] > 0:
            out[r] = int(np.argmax(values))
            continue
        ids, noisy = scores(values, row)
        out[r] = ids[int(np.argmax(noisy))]
    return out
