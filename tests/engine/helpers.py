from __future__ import annotations

import itertools

import numpy as np

from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduling import Scheduling
from ember.engine.sequence import EQUAL_SCHEDULING, Sequence

_ids = itertools.count()


def make_seq(
    tokens: list[int],
    params: SamplingParams | None = None,
    seed: int = 0,
    scheduling: Scheduling = EQUAL_SCHEDULING,
) -> Sequence:
    seq_id = next(_ids)
    return Sequence(
        seq_id=seq_id,
        request_id=f"r{seq_id}",
        token_ids=list(tokens),
        num_prompt_tokens=len(tokens),
        params=params or SamplingParams(),
        rng=np.random.default_rng(seed),
        arrival_time=0.0,
        scheduling=scheduling,
    )
