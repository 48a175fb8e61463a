"""What the engine reports about a request after each step."""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.sequence import FinishReason, RequestId, TokenLogprob


# Not frozen: one is made per running request per step, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs about twice as much.
@dataclass(slots=True)
class RequestOutput:
    request_id: RequestId
    new_token_ids: list[int]
    new_text: str
    new_logprobs: list[TokenLogprob]
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_prompt_tokens: int
    num_output_tokens: int
