"""The engine end to end on the CPU, on the tiny fixture model (tests/fixtures/tiny_llama.gguf);
the invariance tests also on the real default model (slow), and what only a trained model can
show (a chat that ends its turn) on the real model alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ember import LLM, PromptTooLongError, SamplingParams
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.scheduling import Scheduling
from ember.errors import InvalidRequestError
from ember.model.loader import LoadedModel

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


def token_ids(llm: LLM, prompts: list[str], params: SamplingParams = GREEDY) -> list[list[int]]:
    return [c.token_ids for c in llm.generate(prompts, params)]


def llm_over(model: LoadedModel, **options: object) -> LLM:
    config = EngineConfig(show_progress=False, **options)  # type: ignore[arg-type]
    return LLM(engine=LLMEngine(config, model=model))


def prompt_lengths(model: LoadedModel) -> list[int]:
    return [len(model.tokenizer.encode(p, add_special_tokens=True)) for p in PROMPTS]


@pytest.fixture(scope="module")
def one_at_a_time(model: LoadedModel) -> list[list[int]]:
    llm = llm_over(model, max_num_seqs=1)
    alone = [token_ids(llm, [p])[0] for p in PROMPTS]
    assert all(len(t) == 12 for t in alone)
    # Distinct prompts, distinct continuations: a batching bug that mixes up sequences shows.
    assert len({tuple(t) for t in alone}) == len(PROMPTS)
    return alone


def test_batched_greedy_equals_one_at_a_time(
    model: LoadedModel, one_at_a_time: list[list[int]]
) -> None:
    # A small token budget forces chunked prefills to share steps with decodes.
    budget = 24
    assert max(prompt_lengths(model)) > budget
    llm = llm_over(model, max_num_batched_tokens=budget)
    assert token_ids(llm, PROMPTS) == one_at_a_time


def test_preemption_gives_same_outputs(model: LoadedModel, one_at_a_time: list[list[int]]) -> None:
    block_size = 8
    # Room for the longest sequence alone and a little more, far from all five at once.
    longest = max(prompt_lengths(model)) + GREEDY.max_tokens
    num_blocks = -(-longest // block_size) + 1
    llm = llm_over(model, num_kv_blocks=num_blocks, block_size=block_size)
    assert token_ids(llm, PROMPTS) == one_at_a_time
    assert llm.engine.stats().num_preemptions > 0
    assert llm.engine.stats().kv_usage == 0.0


def test_prefix_cache_hit_gives_same_output(make_tiny_llm: MakeLLM) -> None:
    system = "You are a meticulous assistant. " * 4
    first, second = system + "Name a color.", system + "Name a fruit."
    cached = make_tiny_llm()
    cached.generate(first, GREEDY)
    hits_before = cached.engine.stats().prefix_cache_hits
    out = cached.generate(second, GREEDY)[0]
    assert out.num_cached_prompt_tokens >= 3 * cached.engine.config.block_size
    assert cached.engine.stats().prefix_cache_hits - hits_before == out.num_cached_prompt_tokens
    uncached = make_tiny_llm(enable_prefix_caching=False)
    assert uncached.generate(second, GREEDY)[0].token_ids == out.token_ids


def test_seeded_sampling_is_reproducible_regardless_of_batch(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
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


def test_max_tokens_and_length_finish(make_tiny_llm: MakeLLM) -> None:
    out = make_tiny_llm().generate(PROMPTS[2], SamplingParams(max_tokens=5, temperature=0.0))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_stop_string_cuts_text(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    prompt = PROMPTS[3]
    full = llm.generate(prompt, GREEDY)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # most likely spans two tokens
    cut = full.index(stop)
    assert cut > 0
    out = llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full[:cut]
    assert len(out.token_ids) < 12
    kept = llm.generate(
        prompt,
        SamplingParams(
            max_tokens=12, temperature=0.0, stop=[stop], include_stop_str_in_output=True
        ),
    )[0]
    assert kept.text == full[: cut + len(stop)]


def test_stop_token_ids(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    free = llm.generate(PROMPTS[3], GREEDY)[0]
    stopper = free.token_ids[3]
    out = llm.generate(
        PROMPTS[3], SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stopper])
    )[0]
    assert (
        out.finish_reason == "stop"
        and out.token_ids == free.token_ids[: free.token_ids.index(stopper) + 1]
    )


def test_chat_renders_the_template_and_generates(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    messages = [{"role": "user", "content": "Name a color."}]
    out = llm.chat(messages, GREEDY)[0]
    rendered = "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    assert out.prompt_token_ids == llm.tokenizer.encode(rendered)
    assert out.prompt_token_ids[0] == llm.tokenizer.bos_id  # <|im_start|> is one token
    assert out.token_ids == llm.generate(rendered, GREEDY)[0].token_ids


def test_chat_stops_at_end_of_turn(make_llm: MakeLLM) -> None:
    out = make_llm().chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(max_tokens=64, temperature=0.0),
    )[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop" and "<|im_end|>" not in out.text


def test_logprobs_top_n(make_tiny_llm: MakeLLM) -> None:
    out = make_tiny_llm().generate(
        PROMPTS[0], SamplingParams(max_tokens=4, temperature=0.0, logprobs=3)
    )[0]
    assert out.logprobs is not None and len(out.logprobs) == 4
    for token, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == token and len(lp.top) == 3
        assert lp.top[0][0] == token  # greedy picks the most likely token
        assert lp.logprob <= 0.0


def test_stream_deltas_concatenate_to_generate_text(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    params = SamplingParams(max_tokens=20, temperature=0.0)
    deltas = list(llm.stream(PROMPTS[1], params))
    assert len(deltas) > 1
    assert "".join(deltas) == llm.generate(PROMPTS[1], params)[0].text
    assert not llm.engine.has_unfinished_requests()


def test_abandoned_stream_frees_its_blocks(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    stream = llm.stream(PROMPTS[2], SamplingParams(max_tokens=50, temperature=0.0))
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished_requests() and llm.engine.stats().kv_usage == 0.0


def test_prompt_longer_than_context(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm()
    context = llm.engine.model_config.context_length
    with pytest.raises(PromptTooLongError, match=f"context length is {context} tokens"):
        llm.generate([[100] * context], GREEDY)
    with pytest.raises(PromptTooLongError, match="10 more were requested"):
        llm.generate([[100] * (context - 5)], SamplingParams(max_tokens=10))
    assert not llm.engine.has_unfinished_requests()


def test_bad_requests_get_specific_errors(make_tiny_llm: MakeLLM) -> None:
    llm = make_tiny_llm(num_kv_blocks=4)
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([""], GREEDY)
    with pytest.raises(InvalidRequestError, match=rf"token ids must be in \[0, {vocab}\)"):
        llm.generate([[1, 2, vocab]], GREEDY)
    with pytest.raises(InvalidRequestError, match="needs 5 KV blocks but the cache holds 4"):
        llm.generate([[100] * 60], SamplingParams(max_tokens=10))
    with pytest.raises(InvalidRequestError, match="2 SamplingParams for 1 prompts"):
        llm.generate(["hi"], [GREEDY, GREEDY])
    with pytest.raises(InvalidRequestError):
        llm.chat([{"role": "user"}])
    # The engine is still healthy after all of that.
    assert llm.generate("Hello", SamplingParams(max_tokens=2))[0].token_ids


def test_priority_preemption_gives_same_outputs(
    model: LoadedModel, one_at_a_time: list[list[int]]
) -> None:
    """Two batch requests fill the engine; three interactive ones arrive and preempt them. Each
    request's greedy tokens are those it gets alone."""
    engine = llm_over(model, max_num_seqs=2).engine
    bulk, chat = Scheduling(priority=2, tenant="bulk"), Scheduling(priority=0, tenant="chat")
    got: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    admitted: list[int] = []

    def step() -> None:
        for out in engine.step():
            got[out.request_id] += out.new_token_ids
        admitted.extend(engine.admitted)

    for i in (0, 1):
        engine.add_request(i, PROMPTS[i], GREEDY, scheduling=bulk)
    for _ in range(3):
        step()
    for i in (2, 3, 4):
        engine.add_request(i, PROMPTS[i], GREEDY, scheduling=chat)
    stats = engine.stats()
    assert stats.running_by_priority == {2: 2} and stats.waiting_by_priority == {0: 3}
    step()
    assert engine.stats().running_by_priority == {0: 1, 2: 1}
    while engine.has_unfinished_requests():
        step()
    assert [got[i] for i in range(len(PROMPTS))] == one_at_a_time
    assert engine.stats().num_preemptions == 2
    assert admitted[:4] == [0, 1, 2, 3] and sorted(admitted[4:]) == [0, 1, 4]
    assert engine.stats().kv_usage == 0.0


def test_an_interactive_arrival_beside_a_batch_flood_gets_its_first_token_from_its_own_step(
    make_tiny_llm: MakeLLM,
) -> None:
    """Eight batch requests decoding; an interactive one arrives: the next step is its own
    (its prefill, its first token; no batch token), counted in the stats, and the batch goes on
    at the step after it. Everyone's tokens are those they get alone."""
    engine = make_tiny_llm(max_num_seqs=16).engine
    bulk, chat = Scheduling(priority=2, tenant="bulk"), Scheduling(priority=0, tenant="chat")
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    got: dict[int, list[int]] = {}

    def step() -> set[int]:
        stepped = set()
        for out in engine.step():
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
            stepped.add(out.request_id)
        return stepped

    for i in range(8):
        engine.add_request(i, PROMPTS[i % len(PROMPTS)], params, scheduling=bulk)
    while len(got) < 8:  # their prefills, a few a step on the CPU
        step()
    assert step() == set(range(8))  # all decoding
    engine.add_request(8, PROMPTS[0], params, scheduling=chat)
    assert step() == {8} and len(got[8]) == 1
    assert engine.stats().num_urgent_steps == 1
    assert step() == set(range(9))  # never two in a row: everyone
    while engine.has_unfinished_requests():
        step()
    alone = make_tiny_llm().generate(PROMPTS, params)
    assert [got[i] for i in range(9)] == [alone[i % len(PROMPTS)].token_ids for i in range(8)] + [
        alone[0].token_ids
    ]
    assert engine.stats().num_urgent_steps == 1
