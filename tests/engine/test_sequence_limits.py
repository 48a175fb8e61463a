"""SequenceLimits: the one check of whether a request fits (the engine's and the server's)."""

from __future__ import annotations

import pytest

from ember.engine.sequence_limits import SequenceLimits
from ember.errors import (
    EmptyPromptError,
    KVCacheTooSmallError,
    PromptTokenIdError,
    PromptTooLongError,
)

# 100-token vocabulary, 64-token context, 3 blocks of 16 tokens: the cache is the tighter bound.
LIMITS = SequenceLimits(vocab_size=100, context_length=64, num_kv_blocks=3, block_size=16)


def test_requested_max_tokens_that_fit_are_kept() -> None:
    assert LIMITS.max_tokens_for(10, 38) == 38  # 48 tokens: exactly 3 blocks
    assert LIMITS.max_tokens_for(1, 1) == 1


def test_no_max_tokens_means_all_the_room_the_tighter_bound_leaves() -> None:
    assert LIMITS.max_tokens_for(10, None) == 48 - 10
    roomy = SequenceLimits(vocab_size=100, context_length=64, num_kv_blocks=100, block_size=16)
    assert roomy.max_tokens_for(10, None) == 64 - 10


def test_over_the_context_blames_max_tokens_with_the_numbers() -> None:
    roomy = SequenceLimits(vocab_size=100, context_length=64, num_kv_blocks=100, block_size=16)
    with pytest.raises(PromptTooLongError) as caught:
        roomy.max_tokens_for(60, 10)
    assert caught.value.param == "max_tokens"
    assert str(caught.value) == (
        "the prompt has 60 tokens and 10 more were requested (max_tokens): 70 tokens, but the "
        "model's context length is 64 tokens; lower max_tokens or shorten the prompt"
    )


def test_a_prompt_that_fills_the_context_blames_the_prompt() -> None:
    roomy = SequenceLimits(vocab_size=100, context_length=64, num_kv_blocks=100, block_size=16)
    with pytest.raises(PromptTooLongError, match="leaves no room to generate") as caught:
        roomy.max_tokens_for(64, None)
    assert caught.value.param == "prompt"


def test_over_the_kv_cache_says_how_many_blocks() -> None:
    with pytest.raises(KVCacheTooSmallError, match="needs 4 KV blocks but the cache holds 3"):
        LIMITS.max_tokens_for(10, 39)
    with pytest.raises(KVCacheTooSmallError) as caught:
        LIMITS.max_tokens_for(48, None)  # no room left for one token
    assert caught.value.param == "prompt" and caught.value.blocks_needed == 4


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(EmptyPromptError, match="empty") as caught:
        LIMITS.max_tokens_for(0, 5)
    assert caught.value.param == "prompt"


def test_prompt_ids_must_be_in_the_vocabulary() -> None:
    LIMITS.check_prompt_ids([0, 99, 5])
    LIMITS.check_prompt_ids([])
    for ids in ([1, 100, 2], [-1], [5, 1000, -3]):
        with pytest.raises(PromptTokenIdError, match=r"must be in \[0, 100\)") as caught:
            LIMITS.check_prompt_ids(ids)
        assert caught.value.param == "prompt"
        assert caught.value.bad_ids == [t for t in ids if not 0 <= t < 100]
