"""ember.kernels.sampling against the CPU sampler's candidate sets and the NumPy reference."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from ember.engine.sampler import filtered_probs
from ember.engine.sampling_params import SamplingParams
from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.sampling import ROW_PARAMS_DTYPE, Sampling, row_params
from ember.kernels.sampling_reference import gumbel_noise, reference_sample, scores
from tests.engine.helpers import make_seq

pytestmark = pytest.mark.gpu

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
# The kernel's float32 top-p sums are within this (relative to the total) of exact ones; a
# probability this close to min_p (relative) is within exp rounding of it.
TOP_P_SLACK = 1e-5
MIN_P_SLACK = 1e-5
# Scores this close are within an ulp or two of float32 log rounding of each other.
SCORE_SLACK = 1e-5


def distinct_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> np.ndarray:
    """Random logits with no two equal in a row (ties at a threshold are a documented case)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, vocab), dtype=np.float32)
    for r in range(rows):
        x = (rng.standard_normal(vocab) * scale).astype(np.float32)
        while True:
            order = np.argsort(x, kind="stable")
            ordered = x[order]
            dup = np.nonzero(ordered[1:] == ordered[:-1])[0] + 1
            if not len(dup):
                break
            x[order[dup]] = np.nextafter(ordered[dup], np.float32(np.inf))
        out[r] = x
    return out


def mixed_params(rows: int, vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return row_params(
        rng.choice([0.0, 0.5, 1.0, 1.5], rows),
        rng.choice([0, -1, 1, 2, 5, 50, max(vocab - 1, 0), vocab], rows),
        rng.choice([1.0, 0.9, 0.5, 0.99, 0.05], rows),
        rng.choice([0.0, 0.0, 0.05, 0.3], rows),
        rng.integers(0, 2**64, rows, dtype=np.uint64),
        rng.integers(0, 1_000_000, rows),
    )


def run_sample(
    sampling: Sampling,
    logits: np.ndarray,
    params: np.ndarray,
    rows: int | None = None,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    with (
        DeviceArray.from_numpy(np.ascontiguousarray(logits)) as device_logits,
        DeviceArray.from_numpy(params) as device_params,
        DeviceArray.empty((logits.shape[0],), np.int32) as out,
        DeviceArray.from_numpy(np.zeros((1, 1), np.int32) if masks is None else masks) as m,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)
        sampling.sample(device_logits, device_params, out, rows, masks=None if masks is None else m)
        return out.to_numpy()


def _kept_lengths(z: np.ndarray, top_k: int, top_p: float, min_p: float) -> tuple[np.ndarray, set]:
    """The top-k set in descending order, and the lengths of its prefix that are right draws'
    candidate sets: the CPU rule's, and where a boundary is within rounding (the CPU's float32
    cumsum drifts by up to ~1e-4 of the total over 49152 terms) the exact one and neighbours."""
    vocab = z.shape[0]
    ids = np.argpartition(z, -top_k)[-top_k:] if 0 < top_k < vocab else np.arange(vocab)
    ids = ids[np.argsort(-z[ids], kind="stable")]
    probs = np.exp(z[ids] - z[ids[0]])
    top_p32, min_p32 = np.float32(top_p), np.float32(min_p)
    lengths = {len(ids)}
    if top_p32 < 1.0:
        cumulative = np.cumsum(probs)
        exact = np.cumsum(probs.astype(np.float64))
        target = float(top_p32) * exact[-1]
        lengths = {
            int(np.searchsorted(cumulative, top_p32 * cumulative[-1])) + 1,
            int(np.searchsorted(exact, target)) + 1,
        }
        for j in np.nonzero(np.abs(exact - target) <= TOP_P_SLACK * exact[-1])[0]:
            lengths |= {int(j) + 1, int(j) + 2}
    if min_p32 > 0.0:
        near = np.nonzero(np.abs(probs.astype(np.float64) - min_p32) <= MIN_P_SLACK * min_p32)[0]
        options = {max(int(np.count_nonzero(probs >= min_p32)), 1)}
        options |= {int(j) for j in near} | {int(j) + 1 for j in near}
        lengths = {min(a, b) for a in lengths for b in options}
    return ids, {n for n in lengths if 1 <= n <= len(ids)}


def explained(token: int, logits_row: np.ndarray, params_row: np.void) -> bool:
    """Whether a token that differs from the reference's is still a right draw: the Gumbel
    winner for a candidate set within rounding of the reference's, or a near-tie of scores."""
    temperature = np.float32(params_row["temperature"])
    if not temperature > 0:
        return False
    z = logits_row / temperature
    ids, lengths = _kept_lengths(
        z, int(params_row["top_k"]), float(params_row["top_p"]), float(params_row["min_p"])
    )
    seed = int(params_row["seed_lo"]) | int(params_row["seed_hi"]) << 32
    for length in lengths:
        kept = np.sort(ids[:length])
        noisy = z[kept] + gumbel_noise(seed, int(params_row["step"]), kept)
        best = noisy.max()
        if token in kept and noisy[kept == token][0] >= best - SCORE_SLACK * (1 + abs(best)):
            return True
    return False


def assert_matches_reference(
    tokens: np.ndarray, logits: np.ndarray, params: np.ndarray, rows: Iterable[int] | None = None
) -> None:
    want = reference_sample(logits, params)
    indices = range(len(tokens)) if rows is None else rows
    differ = [r for r in indices if tokens[r] != want[r]]
    unexplained = [r for r in differ if not explained(int(tokens[r]), logits[r], params[r])]
    assert not unexplained, [(r, int(tokens[r]), int(want[r]), params[r]) for r in unexplained]
    assert len(differ) <= max(2, len(tokens) // 50), f"{len(differ)} rows within rounding"


def cpu_candidates(logits_row: np.ndarray, combo: tuple[float, int, float, float]):
    temperature, top_k, top_p, min_p = combo
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return filtered_probs(logits_row, make_seq([1], params))


@pytest.mark.parametrize("shape", [(4, 49152), (3, 1001), (2, 7), (2, 256000), (1, 1)])
def test_greedy_is_argmax(sampling: Sampling, context: Context, shape: tuple[int, int]) -> None:
    logits = distinct_logits(*shape, seed=1)
    params = row_params(0.0, 0, 1.0, 0.0, np.arange(shape[0]), 0)
    np.testing.assert_array_equal(run_sample(sampling, logits, params), logits.argmax(axis=1))


def test_greedy_ties_go_to_the_lowest_index(sampling: Sampling, context: Context) -> None:
    logits = distinct_logits(4, 4096, seed=2)
    for row, positions in enumerate([[3000, 5], [9, 8], [4095, 0], [2000, 50, 100]]):
        logits[row, positions] = logits[row].max() + 1.0
    params = row_params(0.0, 0, 1.0, 0.0, 0, 0)
    params = np.repeat(params, 4)
    np.testing.assert_array_equal(run_sample(sampling, logits, params), [5, 8, 0, 50])


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize(("vocab", "draws"), [(1000, 4000), (49152, 256)])
def test_draws_stay_in_and_cover_the_cpu_candidate_set(
    sampling: Sampling,
    context: Context,
    combo: tuple[float, int, float, float],
    vocab: int,
    draws: int,
) -> None:
    logits_row = distinct_logits(1, vocab, seed=3)[0]
    temperature, top_k, top_p, min_p = combo
    cpu_ids, probs = cpu_candidates(logits_row, combo)
    # Where a boundary token is within rounding, a draw of it is right either way.
    ids, lengths = _kept_lengths(logits_row / np.float32(temperature), top_k, top_p, min_p)
    assert len(cpu_ids) in lengths and set(cpu_ids.tolist()) == set(ids[: len(cpu_ids)].tolist())
    seeds = np.arange(draws, dtype=np.uint64) * np.uint64(7919) + np.uint64(1)
    params = row_params(temperature, top_k, top_p, min_p, seeds, np.arange(draws) % 7)
    tokens = run_sample(sampling, np.broadcast_to(logits_row, (draws, vocab)), params)
    assert set(tokens.tolist()) <= set(ids[: max(lengths)].tolist())
    surely = min(lengths)
    likely = cpu_ids[:surely][probs[:surely] / probs.sum() * draws >= 25]
    assert set(likely.tolist()) <= set(tokens.tolist())


@pytest.mark.parametrize(
    ("rows", "vocab"), [(300, 1001), (64, 49152), (100, 7), (4, 256000), (5, 1), (40, 4096)]
)
def test_matches_the_reference(sampling: Sampling, context: Context, rows: int, vocab: int) -> None:
    logits = distinct_logits(rows, vocab, seed=vocab)
    logits *= np.random.default_rng(4).choice([0.3, 1.0, 3.0], (rows, 1)).astype(np.float32)
    params = mixed_params(rows, vocab, seed=vocab + 1)
    assert_matches_reference(run_sample(sampling, logits, params), logits, params)


def test_a_draw_depends_only_on_its_row_seed_and_step(sampling: Sampling, context: Context) -> None:
    vocab = 49152
    row = distinct_logits(1, vocab, seed=5)[0]
    mine = row_params(0.9, 0, 0.95, 0.0, 2**62 + 17, 11)
    alone = run_sample(sampling, row[None, :], mine)[0]
    others = distinct_logits(6, vocab, seed=6)
    others[4] = row
    batch_params = mixed_params(6, vocab, seed=7)
    batch_params[4] = mine[0]
    assert run_sample(sampling, others, batch_params)[4] == alone
    assert run_sample(sampling, others[2:], batch_params[2:], rows=3)[2] == alone
    again = run_sample(sampling, others, batch_params)
    np.testing.assert_array_equal(again, run_sample(sampling, others, batch_params))
    steps = row_params(0.9, 0, 0.95, 0.0, 2**62 + 17, np.arange(64))
    assert len(set(run_sample(sampling, np.broadcast_to(row, (64, vocab)), steps))) > 1


@pytest.mark.parametrize(("top_k", "df"), [(0, 15), (5, 4)])
@pytest.mark.parametrize("vary", ["seed", "step"])
def test_frequencies_follow_softmax(
    sampling: Sampling, context: Context, top_k: int, df: int, vary: str
) -> None:
    draws, vocab, temperature = 20_000, 16, 0.8
    logits_row = distinct_logits(1, vocab, seed=8, scale=1.0)[0]
    counter = np.arange(draws)
    seeds, steps = (counter, 3) if vary == "seed" else (12345, counter)
    params = row_params(temperature, top_k, 1.0, 0.0, seeds, steps)
    tokens = run_sample(sampling, np.broadcast_to(logits_row, (draws, vocab)), params)
    z = (logits_row / np.float32(temperature)).astype(np.float64)
    if top_k:
        z[np.argsort(-z)[top_k:]] = -np.inf
    expected = np.exp(z - z.max())
    expected *= draws / expected.sum()
    counts = np.bincount(tokens, minlength=vocab)
    kept = expected > 0
    assert counts[~kept].sum() == 0
    chi2 = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()
    assert chi2 < CHI2_1E6[df], (counts, expected)


def test_unaligned_rows_give_the_same_tokens(sampling: Sampling, context: Context) -> None:
    # One float in, rows are no longer 16-byte aligned: the kernel reads them a float at a time
    # but visits them in the same order, so every sum and every token is the same.
    rows, vocab = 16, 4096
    logits = distinct_logits(rows, vocab, seed=9)
    params = mixed_params(rows, vocab, seed=10)
    aligned = run_sample(sampling, logits, params)
    shifted = np.concatenate([np.zeros(1, np.float32), logits.reshape(-1)])
    with (
        DeviceArray.from_numpy(shifted) as device_logits,
        DeviceArray.from_numpy(params) as device_params,
        DeviceArray.empty((rows,), np.int32) as out,
    ):
        view = device_logits.flat_slice(1, rows * vocab + 1)
        sampling.sample(DeviceArray(view.buffer, (rows, vocab), view.dtype), device_params, out)
        np.testing.assert_array_equal(out.to_numpy(), aligned)
    assert_matches_reference(aligned, logits, params)


@pytest.mark.parametrize(
    "combo",
    [
        (1.0, 0, 1.0, 0.0),
        (1.0, 0, 0.9, 0.0),
        (1.0, 600, 1.0, 0.0),
        (0.7, 0, 1.0, 0.1),
        (0.0, 0, 1.0, 0.0),
    ],
)
def test_masked_logits_are_never_drawn(
    sampling: Sampling, context: Context, combo: tuple[float, int, float, float]
) -> None:
    draws, vocab = 500, 1000
    logits_row = distinct_logits(1, vocab, seed=11)[0]
    masked = np.random.default_rng(12).permutation(vocab)[: vocab // 2]
    logits_row[masked] = -np.inf
    params = row_params(*combo, np.arange(draws), 0)
    tokens = run_sample(sampling, np.broadcast_to(logits_row, (draws, vocab)), params)
    assert not set(tokens.tolist()) & set(masked.tolist())
    assert tokens.min() >= 0


@pytest.mark.parametrize("vocab", [49152, 1001, 4099])
def test_token_masks_sample_as_if_left_out_tokens_were_minus_infinity(
    sampling: Sampling, context: Context, vocab: int
) -> None:
    """A structured output's mask: the kernel reading the bitmask draws exactly what it draws
    from logits with the left-out tokens set to -inf; rows naming no mask are unchanged."""
    rows = 48
    rng = np.random.default_rng(vocab)
    logits = distinct_logits(rows, vocab, seed=vocab + 2)
    allowed = rng.random((3, vocab)) < np.array([[0.5], [0.01], [0.999]])
    allowed[:, rng.integers(vocab)] = True  # never an empty mask
    words = (vocab + 31) // 32
    padded = np.zeros((3, words * 32), np.bool_)
    padded[:, :vocab] = allowed
    masks = np.packbits(padded, axis=1, bitorder="little").view(np.int32)
    mask_row = rng.choice([-1, 0, 1, 2], rows)
    params = mixed_params(rows, vocab, seed=vocab + 3)
    params["mask_row"] = mask_row
    want_logits = logits.copy()
    for r, m in enumerate(mask_row):
        if m >= 0:
            want_logits[r, ~allowed[m]] = -np.inf
    plain = params.copy()
    plain["mask_row"] = -1
    want = run_sample(sampling, want_logits, plain)
    got = run_sample(sampling, logits, params, masks=masks)
    np.testing.assert_array_equal(got, want)
    for r, m in enumerate(mask_row):
        if m >= 0:
            assert allowed[m, got[r]]


def test_rows_samples_a_prefix_of_preallocated_buffers(
    sampling: Sampling, context: Context
) -> None:
    logits = distinct_logits(8, 1000, seed=13)
    params = mixed_params(8, 1000, seed=14)
    tokens = run_sample(sampling, logits, params, rows=3)
    np.testing.assert_array_equal(tokens[3:], -1)
    assert_matches_reference(tokens, logits, params, rows=range(3))


def test_launch_replays_with_params_as_bytes(
    sampling: Sampling, context: Context, stream: Stream
) -> None:
    logits = distinct_logits(5, 3000, seed=15)
    params = mixed_params(5, 3000, seed=16)
    with (
        DeviceArray.from_numpy(logits) as device_logits,
        DeviceArray.from_numpy(params.view(np.uint8)) as param_bytes,
        DeviceArray.empty((5,), np.int32) as out,
    ):
        launch = sampling.sample_launch(device_logits, param_bytes, out)
        assert "sample_f32" in repr(launch)
        context.synchronize()  # the uploads ran on the legacy stream
        launch(stream)
        stream.synchronize()
        first = out.to_numpy()
        out.buffer.memset_d32(0xFFFFFFFF, stream)
        launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(out.to_numpy(), first)
    assert_matches_reference(first, logits, params)


def test_sample_checks_dtypes_and_shapes(sampling: Sampling, context: Context) -> None:
    with (
        DeviceArray.empty((2, 8), np.float32) as logits,
        DeviceArray.empty((2, 8), np.float16) as half_logits,
        DeviceArray.empty((2,), ROW_PARAMS_DTYPE) as params,
        DeviceArray.empty((2,), np.float32) as float_params,
        DeviceArray.empty((40,), np.uint8) as odd_bytes,
        DeviceArray.empty((2,), np.int32) as out,
        DeviceArray.empty((2,), np.int64) as long_out,
        DeviceArray.empty((2, 0), np.float32) as empty_vocab,
    ):
        with pytest.raises(TypeError, match="float16"):
            sampling.sample_launch(half_logits, params, out)
        with pytest.raises(TypeError, match="int64"):
            sampling.sample_launch(logits, params, long_out)
        with pytest.raises(TypeError, match="ROW_PARAMS_DTYPE"):
            sampling.sample_launch(logits, float_params, out)
        with pytest.raises(TypeError, match="ROW_PARAMS_DTYPE"):
            sampling.sample_launch(logits, odd_bytes, out)
        with pytest.raises(ValueError, match="rows"):
            sampling.sample_launch(logits, params, out, rows=3)
        with pytest.raises(ValueError, match="rows"):
            sampling.sample_launch(logits, params, out, rows=0)
        with pytest.raises(ValueError, match="vocab"):
            sampling.sample_launch(empty_vocab, params, out)
        with pytest.raises(ValueError, match="vocab"):
            sampling.sample_launch(logits.view((16,), np.float32), params, out)
        sampling.sample(logits, params, out, rows=0)  # nothing to do


def test_reference_scores_helper_agrees_with_reference_sample() -> None:
    # Not a GPU test at heart, but `explained` leans on it: keep the two in step.
    logits = distinct_logits(20, 500, seed=17)
    params = mixed_params(20, 500, seed=18)
    want = reference_sample(logits, params)
    for r in range(20):
        if params[r]["temperature"] > 0:
            ids, noisy = scores(logits[r], params[r])
            assert ids[int(np.argmax(noisy))] == want[r]
            assert explained(int(want[r]), logits[r], params[r])
