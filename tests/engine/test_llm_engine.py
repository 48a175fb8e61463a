"""The engine end to end on the real default model (CPU)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ember import LLM, PromptTooLongError, SamplingParams
from ember.errors import InvalidRequestError

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "woodcutter who had three sons. The eldest was strong, the second was clever, and the "
    "youngest",
    "1, 2, 3, 4,",
    "Water boils at",
]

MakeLLM = Callable[..., LLM]


def texts(llm: LLM, prompts: list[str], params: SamplingParams = GREEDY) -> list[list[int]]:
    return [c.token_ids for c in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def one_at_a_time(default_model) -> list[list[int]]:  # type: ignore[no-untyped-def]
    from ember.engine.llm_engine import EngineConfig, LLMEngine

    llm = LLM(engine=LLMEngine(EngineConfig(max_num_seqs=1), model=default_model))
    return [texts(llm, [p])[0] for p in PROMPTS]


def test_batched_greedy_equals_one_at_a_time(
    make_llm: MakeLLM, one_at_a_time: list[list[int]]
) -> None:
    # A small token budget forces chunked prefills to share steps with decodes.
    llm = make_llm(max_num_batched_tokens=24)
    assert texts(llm, PROMPTS) == one_at_a_time
    assert all(len(t) == 12 for t in one_at_a_time)


def test_preemption_gives_same_outputs(make_llm: MakeLLM, one_at_a_time: list[list[int]]) -> None:
    llm = make_llm(num_kv_blocks=8, block_size=8)  # 64 tokens for five sequences
    assert texts(llm, PROMPTS) == one_at_a_time
    assert llm.engine.stats().num_preemptions > 0
    assert llm.engine.stats().kv_usage == 0.0


def test_prefix_cache_hit_gives_same_output(make_llm: MakeLLM) -> None:
    system = "You are a meticulous assistant. " * 12
    first, second = system + "Name a color.", system + "Name a fruit."
    cached = make_llm()
    cached.generate(first, GREEDY)
    hits_before = cached.engine.stats().prefix_cache_hits
    out = cached.generate(second, GREEDY)[0]
    assert out.num_cached_prompt_tokens >= 64
    assert cached.engine.stats().prefix_cache_hits - hits_before == out.num_cached_prompt_tokens
    uncached = make_llm(enable_prefix_caching=False)
    assert uncached.generate(second, GREEDY)[0].token_ids == out.token_ids


def test_seeded_sampling_is_reproducible_regardless_of_batch(make_llm: MakeLLM) -> None:
    llm = make_llm()
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    alone = llm.generate(PROMPTS[0], seeded)[0].text
    again = llm.generate(PROMPTS[0], seeded)[0].text
    batched = llm.generate(
        [PROMPTS[2], PROMPTS[0], PROMPTS[1]],
        [SamplingParams(max_tokens=16, temperature=1.0), seeded, GREEDY],
    )[1].text
    assert alone == again == batched
    other = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, temperature=1.0, seed=99))
    assert other[0].text != alone


def test_max_tokens_and_length_finish(make_llm: MakeLLM) -> None:
    out = make_llm().generate(PROMPTS[2], SamplingParams(max_tokens=5, temperature=0.0))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_stop_string_cuts_text(make_llm: MakeLLM) -> None:
    llm = make_llm()
    full = llm.generate("1, 2, 3, 4,", SamplingParams(max_tokens=12, temperature=0.0))[0].text
    assert " 7" in full
    out = llm.generate("1, 2, 3, 4,", SamplingParams(max_tokens=12, temperature=0.0, stop=[" 7"]))[
        0
    ]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.index(" 7")]
    kept = llm.generate(
        "1, 2, 3, 4,",
        SamplingParams(
            max_tokens=12, temperature=0.0, stop=[" 7"], include_stop_str_in_output=True
        ),
    )[0]
    assert kept.text == full[: full.index(" 7") + 2]


def test_stop_token_ids(make_llm: MakeLLM) -> None:
    llm = make_llm()
    free = llm.generate(PROMPTS[3], GREEDY)[0]
    stopper = free.token_ids[3]
    out = llm.generate(
        PROMPTS[3], SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stopper])
    )[0]
    assert (
        out.finish_reason == "stop"
        and out.token_ids == free.token_ids[: free.token_ids.index(stopper) + 1]
    )


def test_chat_stops_at_end_of_turn(make_llm: MakeLLM) -> None:
    out = make_llm().chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(max_tokens=64, temperature=0.0),
    )[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop" and "<|im_end|>" not in out.text


def test_logprobs_top_n(make_llm: MakeLLM) -> None:
    out = make_llm().generate(
        PROMPTS[0], SamplingParams(max_tokens=4, temperature=0.0, logprobs=3)
    )[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == token and len(lp.top) == 3
        assert lp.top[0][0] == token  # greedy picks the most likely token
        assert lp.logprob <= 0.0


def test_stream_deltas_concatenate_to_generate_text(make_llm: MakeLLM) -> None:
    llm = make_llm()
    params = SamplingParams(max_tokens=20, temperature=0.0)
    deltas = list(llm.stream(PROMPTS[1], params))
    assert len(deltas) > 1
    assert "".join(deltas) == llm.generate(PROMPTS[1], params)[0].text
    assert not llm.engine.has_unfinished_requests()


def test_abandoned_stream_frees_its_blocks(make_llm: MakeLLM) -> None:
    llm = make_llm()
    stream = llm.stream(PROMPTS[2], SamplingParams(max_tokens=50, temperature=0.0))
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished_requests() and llm.engine.stats().kv_usage == 0.0


def test_prompt_longer_than_context(make_llm: MakeLLM) -> None:
    llm = make_llm()
    context = llm.engine.model_config.context_length
    with pytest.raises(PromptTooLongError, match=f"context length is {context} tokens"):
        llm.generate([[100] * context], GREEDY)
    with pytest.raises(PromptTooLongError, match="10 more were requested"):
        llm.generate([[100] * (context - 5)], SamplingParams(max_tokens=10))
    assert not llm.engine.has_unfinished_requests()


def test_bad_requests_get_specific_errors(make_llm: MakeLLM) -> None:
    llm = make_llm(num_kv_blocks=4)
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([""], GREEDY)
    with pytest.raises(InvalidRequestError, match=r"token ids must be in \[0, 49152\)"):
        llm.generate([[1, 2, 10**6]], GREEDY)
    with pytest.raises(InvalidRequestError, match="needs 5 KV blocks but the cache holds 4"):
        llm.generate([[100] * 60], SamplingParams(max_tokens=10))
    with pytest.raises(InvalidRequestError, match="2 SamplingParams for 1 prompts"):
        llm.generate(["hi"], [GREEDY, GREEDY])
    with pytest.raises(InvalidRequestError):
        llm.chat([{"role": "user"}])
    # The engine is still healthy after all of that.
    assert llm.generate("Hello", SamplingParams(max_tokens=2))[0].token_ids
