"""What a sequence may hold, and the one check of whether a request fits.

A sequence's tokens are ids of the model's vocabulary, and it holds its prompt and every token
it generates in the model's context window and in KV-cache blocks. The engine checks each
request it is given against its own limits; the HTTP server checks the same way, earlier, with
the limits its engine worker reported, so that a request that cannot run gets its 400 before
it is queued. Both ask `check_prompt_ids` and `max_tokens_for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.errors import (
    EmptyPromptError,
    KVCacheTooSmallError,
    PromptTokenIdError,
    PromptTooLongError,
)


@dataclass(frozen=True, slots=True)
class SequenceLimits:
    vocab_size: int
    context_length: int
    num_kv_blocks: int
    block_size: int

    def check_prompt_ids(self, ids: Sequence[int]) -> None:
        """Raises unless every id is a token of the model's vocabulary."""
        vocab = self.vocab_size
        if ids and (min(ids) < 0 or max(ids) >= vocab):  # C loops: prompts can be long
            raise PromptTokenIdError([t for t in ids if not 0 <= t < vocab], vocab)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def max_tokens_for(self, num_prompt_tokens: int, max_tokens: int | None) -> int:
        """The number of tokens a prompt may generate: `max_tokens` when the prompt plus it
        fits, all the room left when it is None; raises the `InvalidRequestError` that says
        why it cannot (its `param` names the field to change)."""
        if num_prompt_tokens == 0:
            raise EmptyPromptError()
        context = self.context_length
        total = num_prompt_tokens + (1 if max_tokens is None else max_tokens)
        if total > context:
            raise PromptTooLongError(num_prompt_tokens, max_tokens, context)
        needed = self.blocks_for(total)
        if needed > self.num_kv_blocks:
            raise KVCacheTooSmallError(num_prompt_tokens, max_tokens, needed, self.num_kv_blocks)
        if max_tokens is not None:
            return max_tokens
        return min(context, self.num_kv_blocks * self.block_size) - num_prompt_tokens
