from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ember.engine.sampler import Sampler, log_softmax
from ember.engine.sampling_params import SamplingParams

from .helpers import make_seq

VOCAB = 50


@pytest.fixture()
def logits() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 2, VOCAB).astype(np.float32)


def draws(logits: np.ndarray, params: SamplingParams, n: int = 400, seed: int = 1) -> Counter[int]:
    seq = make_seq([1, 2, 3], params, seed=seed)
    sampler = Sampler()
    return Counter(sampler.sample(logits[None, :], [seq])[0][0] for _ in range(n))


def test_greedy_takes_argmax(logits: np.ndarray) -> None:
    assert set(draws(logits, SamplingParams(temperature=0.0), n=5)) == {int(logits.argmax())}


def test_top_k_limits_candidates(logits: np.ndarray) -> None:
    top3 = set(np.argsort(-logits)[:3].tolist())
    counts = draws(logits, SamplingParams(temperature=5.0, top_k=3))
    assert set(counts) == top3
    assert set(draws(logits, SamplingParams(temperature=5.0, top_k=1), n=20)) == {
        int(logits.argmax())
    }


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    counts = draws(np.log(probs), SamplingParams(temperature=1.0, top_p=0.7))
    assert set(counts) == {0, 1}
    assert set(draws(np.log(probs), SamplingParams(temperature=1.0, top_p=0.4), n=30)) == {0}


def test_min_p_drops_unlikely_tokens() -> None:
    probs = np.array([0.4, 0.3, 0.2, 0.06, 0.04], np.float32)
    assert set(draws(np.log(probs), SamplingParams(temperature=1.0, min_p=0.4))) == {0, 1, 2}


def test_temperature_sharpens_and_flattens(logits: np.ndarray) -> None:
    cold = draws(logits, SamplingParams(temperature=0.2))
    hot = draws(logits, SamplingParams(temperature=3.0))
    assert len(hot) > len(cold)
    assert cold.most_common(1)[0][0] == int(logits.argmax())


def test_repetition_penalty_changes_greedy_choice() -> None:
    logits = np.array([1.0, 3.0, 2.9, 0.5], np.float32)
    seq = make_seq([1], SamplingParams(temperature=0.0, repetition_penalty=1.2))
    assert Sampler().sample(logits[None], [seq])[0][0] == 2  # 3.0/1.2 < 2.9


def test_presence_and_frequency_penalties_use_output_counts() -> None:
    logits = np.array([0.0, 3.0, 2.5, 0.0], np.float32)
    seq = make_seq([0], SamplingParams(temperature=0.0, presence_penalty=0.6))
    seq.append_token(1)
    assert Sampler().sample(logits[None], [seq])[0][0] == 2
    seq = make_seq([0], SamplingParams(temperature=0.0, frequency_penalty=0.2))
    seq.append_token(1)
    assert Sampler().sample(logits[None], [seq])[0][0] == 1  # one occurrence: 3.0 - 0.2 > 2.5
    seq.append_token(1)
    seq.append_token(1)
    assert Sampler().sample(logits[None], [seq])[0][0] == 2  # three: 3.0 - 0.6 < 2.5


def test_seed_reproducible_and_independent_of_batch(logits: np.ndarray) -> None:
    params = SamplingParams(temperature=1.0, seed=42)
    a = make_seq([1], params, seed=42)
    b = make_seq([1], params, seed=42)
    other = make_seq([1], SamplingParams(temperature=1.0), seed=7)
    sampler = Sampler()
    alone = [sampler.sample(logits[None], [a])[0][0] for _ in range(20)]
    batched = [sampler.sample(np.stack([logits, logits]), [other, b])[1][0] for _ in range(20)]
    assert alone == batched
    assert len(set(alone)) > 1


def test_logprobs_are_raw_distribution_sorted(logits: np.ndarray) -> None:
    seq = make_seq([1], SamplingParams(temperature=0.0, logprobs=5))
    token, lp = Sampler().sample(logits[None], [seq])[0]
    assert lp is not None
    ref = log_softmax(logits.astype(np.float64))
    assert lp.token_id == token and lp.logprob == pytest.approx(ref[token], abs=1e-5)
    assert [t for t, _ in lp.top] == np.argsort(-ref)[:5].tolist()
    values = [v for _, v in lp.top]
    assert values == sorted(values, reverse=True)
