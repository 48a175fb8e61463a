"""ember.kernels.sampling_reference (the NumPy model of sampling.cu) against the CPU sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ember.engine.sampler import filtered_probs
from ember.engine.sampling_params import SamplingParams
from ember.kernels.sampling import ROW_PARAMS_DTYPE, row_params
from ember.kernels.sampling_reference import (
    candidate_ids,
    gumbel_noise,
    mix64,
    reference_sample,
    stream_key,
)
from tests.engine.helpers import make_seq

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
# Upper tail quantiles of chi-square at p = 1e-6 (scipy.stats.chi2.ppf(1 - 1e-6, df)).
CHI2_1E6 = {4: 33.38, 15: 56.49}
COMBOS = [  # temperature, top_k, top_p, min_p
    (1.0, 0, 1.0, 0.0),
    (0.7, 20, 1.0, 0.0),
    (1.0, 0, 0.9, 0.0),
    (1.3, 0, 1.0, 0.05),
    (0.8, 50, 0.8, 0.0),
    (1.0, 30, 0.95, 0.02),
    (0.5, 0, 0.5, 0.1),
    (1.0, 1, 1.0, 0.0),
    (1.0, 0, 0.01, 0.0),
]


def _logits(shape: tuple[int, ...], seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _py_mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _py_gumbel(seed: int, step: int, i: int) -> float:
    stream = _py_mix64(seed ^ _py_mix64((((step & 0xFFFFFFFF) + 1) * GAMMA) & MASK64))
    k = _py_mix64((stream + (i + 1) * GAMMA) & MASK64) >> 40
    u = (k + (0.5 if k < 1 << 23 else 0.0)) / 2.0**24
    return -math.log(-math.log(u))


def _cpu_filtered(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> tuple[np.ndarray, np.ndarray]:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return filtered_probs(logits, make_seq([1], params))


def test_row_params_dtype_matches_the_kernel_struct() -> None:
    assert ROW_PARAMS_DTYPE.itemsize == 32
    assert ROW_PARAMS_DTYPE.names == (
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "seed_lo",
        "seed_hi",
        "step",
        "mask_row",
    )
    assert [ROW_PARAMS_DTYPE.fields[n][1] for n in ROW_PARAMS_DTYPE.names] == list(range(0, 32, 4))


def test_row_params_fills_rows_and_splits_seeds() -> None:
    seeds = np.array([0, 2**63 - 1, (7 << 32) | 9], dtype=np.uint64)
    p = row_params([0.0, 0.5, 1.0], [0, 5, 7], 0.9, [0.0, 0.1, 0.2], seeds, [0, -1, 3])
    assert p.dtype == ROW_PARAMS_DTYPE and p.shape == (3,)
    np.testing.assert_array_equal(p["top_p"], np.float32(0.9))
    np.testing.assert_array_equal(p["seed_lo"], [0, 0xFFFFFFFF, 9])
    np.testing.assert_array_equal(p["seed_hi"], [0, 0x7FFFFFFF, 7])
    np.testing.assert_array_equal(p["step"], [0, -1, 3])
    np.testing.assert_array_equal(p["mask_row"], -1)  # no token mask unless one is named
    out = np.zeros(5, dtype=ROW_PARAMS_DTYPE)
    out["mask_row"] = 99
    assert row_params(1.0, 2, 0.5, 0.0, 11, 4, [3, -1], out=out) is out
    assert out[0]["top_k"] == 2 and out[0]["seed_lo"] == 11 and out[0]["mask_row"] == 3
    assert out[1]["mask_row"] == -1 and out[2]["mask_row"] == 99
    with pytest.raises(ValueError, match="ROW_PARAMS_DTYPE"):
        row_params([1.0, 1.0], 0, 1.0, 0.0, 0, 0, out=np.zeros(1, dtype=ROW_PARAMS_DTYPE))


def test_mix64_is_splitmix64() -> None:
    # SplitMix64 seeded with 0 returns mix64(GAMMA) first: 0xE220A8397B1DCDAF.
    assert int(mix64(np.array([GAMMA], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    values = np.random.default_rng(0).integers(0, 2**64, 1000, dtype=np.uint64)
    expected = [_py_mix64(int(v)) for v in values]
    assert [int(h) for h in mix64(values)] == expected


def test_gumbel_noise_matches_python_integers() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        seed = int(rng.integers(0, 2**63))
        step = int(rng.integers(-(2**31), 2**31))
        ids = rng.integers(0, 300_000, 64)
        expected = np.array([_py_gumbel(seed, step, int(i)) for i in ids])
        # The hash is exact; float32 logs versus float64 ones differ by rounding only.
        np.testing.assert_allclose(gumbel_noise(seed, step, ids), expected, rtol=0, atol=3e-6)
    assert int(stream_key(5, -1)) == _py_mix64(5 ^ _py_mix64(((2**32) * GAMMA) & MASK64))


def test_gumbel_noise_is_gumbel_distributed() -> None:
    noise = gumbel_noise(12345, 6, np.arange(200_000)).astype(np.float64)
    assert abs(noise.mean() - 0.5772156649) < 0.015  # Euler-Mascheroni; std error 0.0029
    assert abs(noise.var() - math.pi**2 / 6) < 0.04
    # u = exp(-exp(-g)) must be uniform: 16 equal bins.
    counts = np.bincount((np.exp(-np.exp(-noise)) * 16).astype(np.int64), minlength=16)
    expected = len(noise) / 16
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_1E6[15]
    assert not np.array_equal(gumbel_noise(1, 0, np.arange(64)), gumbel_noise(1, 1, np.arange(64)))
    assert not np.array_equal(gumbel_noise(1, 0, np.arange(64)), gumbel_noise(2, 0, np.arange(64)))


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("vocab", [50, 1001])
def test_candidate_ids_are_the_cpu_samplers(combo: tuple[float, int, float, float], vocab: int):
    temperature, top_k, top_p, min_p = combo
    for seed in range(5):
        logits = _logits((vocab,), seed)
        z = logits / np.float32(temperature)
        got = candidate_ids(z, top_k, float(np.float32(top_p)), float(np.float32(min_p)))
        want, _ = _cpu_filtered(logits, temperature, top_k, top_p, min_p)
        np.testing.assert_array_equal(got, want)


def test_reference_greedy_is_argmax_with_ties_to_the_lowest_index() -> None:
    logits = _logits((6, 1001), 2)
    logits[4, [17, 900]] = logits[4].max() + 1.0
    logits[5, [3, 4]] = logits[5].max() + 1.0
    params = row_params(0.0, 0, 1.0, 0.0, np.arange(6), 0)
    tokens = reference_sample(logits, params)
    np.testing.assert_array_equal(tokens, logits.argmax(axis=1))
    assert tokens[4] == 17 and tokens[5] == 3


@pytest.mark.parametrize("combo", COMBOS)
def test_reference_draws_stay_in_and_cover_the_candidate_set(
    combo: tuple[float, int, float, float],
) -> None:
    temperature, top_k, top_p, min_p = combo
    draws, vocab = 1000, 300
    logits = _logits((vocab,), 3)
    ids, probs = _cpu_filtered(logits, temperature, top_k, top_p, min_p)
    params = row_params(temperature, top_k, top_p, min_p, np.arange(draws) * 7919, 5)
    tokens = reference_sample(np.broadcast_to(logits, (draws, vocab)), params)
    assert set(tokens.tolist()) <= set(ids.tolist())
    likely = ids[probs / probs.sum() * draws >= 25]
    assert set(likely.tolist()) <= set(tokens.tolist())


@pytest.mark.parametrize(("top_k", "df"), [(0, 15), (5, 4)])
def test_reference_frequencies_follow_softmax(top_k: int, df: int) -> None:
    draws, temperature = 4000, 0.8
    logits = _logits((16,), 4, scale=1.0)
    params = row_params(temperature, top_k, 1.0, 0.0, 99, np.arange(draws))
    tokens = reference_sample(np.broadcast_to(logits, (draws, 16)), params)
    z = (logits / np.float32(temperature)).astype(np.float64)
    if top_k:
        z[np.argsort(-z)[top_k:]] = -np.inf
    expected = np.exp(z - z.max())
    expected *= draws / expected.sum()
    counts = np.bincount(tokens, minlength=16)
    kept = expected > 0
    assert counts[~kept].sum() == 0
    chi2 = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()
    assert chi2 < CHI2_1E6[df]


def test_reference_draw_depends_only_on_the_row_and_its_seed_and_step() -> None:
    logits = _logits((8, 257), 5)
    params = row_params(1.0, 0, 0.9, 0.0, np.arange(8) + 40, 3)
    tokens = reference_sample(logits, params)
    reversed_tokens = reference_sample(logits[::-1].copy(), params[::-1].copy())
    np.testing.assert_array_equal(tokens, reversed_tokens[::-1])
