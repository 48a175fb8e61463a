"""One request's tokens and progress through the engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduling import Scheduling

if TYPE_CHECKING:
    from llguidance import LLMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


# A request's id in the engine, given by its caller (the HTTP server's per-choice counter, the
# `LLM` facade's own) and carried unchanged in every output and message about it.
RequestId = int

# All requests equal: first come, first served (the `LLM` API's, and any caller's that sets none).
EQUAL_SCHEDULING = Scheduling()


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: RequestId
    token_ids: list[int]  # prompt followed by generated tokens
    num_prompt_tokens: int
    params: SamplingParams
    rng: np.random.Generator
    arrival_time: float
    status: SequenceStatus = SequenceStatus.WAITING
    # Tokens whose K/V are in the cache (computed, or reused from the prefix cache).
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # The row of the pool's BlockTables mirroring `block_table`; -1 while it holds no blocks.
    table_row: int = -1
    # Chained hashes of the full blocks registered in the prefix cache, in order.
    block_hashes: list[bytes] = field(default_factory=list)
    # Sequences share cached prefix blocks only with sequences of the same salt (a tenant's).
    cache_salt: str | None = None
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_preemptions: int = 0
    scheduling: Scheduling = EQUAL_SCHEDULING
    # Preempted for a higher priority, it may not be again until its tokens (pending ones
    # included) reach this: each such preemption is followed by a token of progress.
    protected_until: int = 0
    # Counts of generated tokens, for presence/frequency penalties.
    output_counts: dict[int, int] = field(default_factory=dict)
    first_token_time: float | None = None
    # Tokens sampled on the device by launched steps that the host has not taken yet
    # (asynchronous scheduling), and the newest one's row in its step's sampled ids.
    num_pending: int = 0
    pending_row: int = 0
    # The seed `rng` was made from; a device sampler derives its draws from it and the step.
    seed: int = 0
    # Its structured output's matcher, at its tokens so far (`params.structured`); the mask of
    # its next token needs every token before it, so with a token pending its next step is
    # sampled only once that token is taken (`ModelRunner.sample_constrained`).
    grammar: LLMatcher | None = None
    # What a device sampler needs of `params` and `seed`, made once rather than every step:
    # (temperature, 0 if greedy; top_k; top_p; min_p; seed; whether the host must sample).
    sampling_row: tuple[float, int, float, float, int, bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = self.params
        self.sampling_row = (
            0.0 if p.greedy else p.temperature,
            p.top_k,
            p.top_p,
            p.min_p,
            self.seed,
            p.has_penalties or p.logprobs is not None,
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending - self.num_computed_tokens

    @property
    def reaches_max_tokens(self) -> bool:
        """Whether its pending tokens take it to `max_tokens` (no further step is needed)."""
        return len(self.token_ids) + self.num_pending - self.num_prompt_tokens >= (
            self.params.max_tokens
        )

    @property
    def waits_for_pending(self) -> bool:
        """Whether a step now would be no use before its pending token arrives (that token is
        its last)."""
        return bool(self.num_pending) and self.reaches_max_tokens

    @property
    def is_protected(self) -> bool:
        """Whether it must make progress before it may be preempted for a higher priority."""
        return len(self.token_ids) + self.num_pending < self.protected_until

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1
