"""`ember bench`'s decode figure: every timed step runs the whole batch, even where the prompts
take several steps to prefill, and the run leaves no request or KV block behind."""

from __future__ import annotations

import numpy as np
import pytest

from ember.bench.engine_throughput import bench_decode
from ember.model.loader import LoadedModel
from tests.engine.reference_sampling import engine_over


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_decode_times_only_full_batch_steps(
    default_model: LoadedModel, async_scheduling: bool
) -> None:
    # 6 prompts of 40 tokens over a 64-token step budget: 4+ prefill steps, in which the first
    # sequences already decode. Before the fix they finished first and the last timed steps ran
    # only part of the batch.
    engine, _ = engine_over(
        default_model, max_num_seqs=8, max_num_batched_tokens=64, async_scheduling=async_scheduling
    )
    result = bench_decode(engine, 6, 5, 40, np.random.default_rng(0))
    assert result.step_tokens == (6,) * 5
    assert result.tokens == 30
    assert not engine.has_unfinished_requests()
    engine.step()  # collects a step still in flight, if any
    assert engine.stats().num_running == 0
    assert engine.pool.usage == 0.0
