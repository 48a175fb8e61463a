"""Asynchronous scheduling: each step is launched before the previous step's tokens are taken,
its decode inputs named by placeholder. It must change nothing a user sees (tokens, text,
finish reasons, seeded draws), waste no step on a request that ends by max_tokens, and leave
no KV block behind, through stops, aborts, preemption and prefix-cache hits. On the tiny
fixture model; the two invariance tests on the default model too (slow)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduling import Scheduling
from ember.model.loader import LoadedModel
from tests.engine.reference_sampling import engine_over


@dataclass
class Result:
    token_ids: list[int]
    text: str
    finish_reason: str | None


def run(engine: LLMEngine, requests: dict[str, tuple[str, SamplingParams]]) -> dict[str, Result]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    out = {rid: Result([], "", None) for rid in requests}
    while engine.has_unfinished_requests():
        for o in engine.step():
            result = out[o.request_id]
            assert result.finish_reason is None, "output after the finish"
            result.token_ids += o.new_token_ids
            result.text += o.new_text
            result.finish_reason = None if o.finish_reason is None else o.finish_reason.value
    return out


def greedy(max_tokens: int, **options: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **options)  # type: ignore[arg-type]


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
]


def test_async_steps_give_what_sync_steps_give(model: LoadedModel) -> None:
    sync, _ = engine_over(model, async_scheduling=False)
    probe = run(sync, {"id": (PROMPTS[1], greedy(8)), "text": (PROMPTS[3], greedy(12))})
    plain, text = probe["id"].token_ids, probe["text"].text
    stop_text = text[len(text) // 2 : len(text) // 2 + 2]
    requests = {
        "greedy": (PROMPTS[0], greedy(7)),
        # Ends on a token id the host learns of only after the next step was launched.
        "stop-id": (PROMPTS[1], greedy(12, stop_token_ids=[plain[4]])),
        "stop-text": (PROMPTS[3], greedy(12, stop=[stop_text])),
        "seeded": (PROMPTS[2], SamplingParams(max_tokens=6, temperature=0.9, top_p=0.9, seed=7)),
        # Logprobs are sampled on the host: its steps run synchronously among async ones.
        "logprobs": (PROMPTS[0], greedy(3, logprobs=2)),
    }
    want = run(sync, requests)
    engine, backend = engine_over(model)
    got = run(engine, requests)
    assert got == want
    assert want["stop-id"].token_ids == plain[: plain.index(plain[4]) + 1]
    assert want["stop-id"].finish_reason == "stop"
    assert want["stop-text"].finish_reason == "stop"
    assert backend.placeholders > 0  # decode inputs did come from the device
    assert engine.pool.num_used_blocks == 0


def test_a_request_ending_by_max_tokens_costs_no_extra_step(tiny_model: LoadedModel) -> None:
    engine, backend = engine_over(tiny_model, enable_prefix_caching=False)
    max_tokens = {PROMPTS[0]: 5, PROMPTS[1]: 3, PROMPTS[3]: 6}
    requests = {prompt: (prompt, greedy(n, ignore_eos=True)) for prompt, n in max_tokens.items()}
    got = run(engine, requests)
    assert {p: len(r.token_ids) for p, r in got.items()} == max_tokens
    # Every prompt token and every generated token but the last went through the model once.
    prompt_tokens = sum(len(engine.tokenizer.encode(p, add_special_tokens=True)) for p in got)
    assert backend.tokens == prompt_tokens + sum(n - 1 for n in max_tokens.values())


def test_abort_while_a_step_is_in_flight(tiny_model: LoadedModel) -> None:
    alone, _ = engine_over(tiny_model)
    want = run(alone, {"keep": (PROMPTS[2], greedy(8, ignore_eos=True))})["keep"]
    engine, _ = engine_over(tiny_model)
    engine.add_request("keep", PROMPTS[2], greedy(8, ignore_eos=True))
    engine.add_request("drop", PROMPTS[0], greedy(8, ignore_eos=True))
    kept: list[int] = []
    for _ in range(3):
        for o in engine.step():
            if o.request_id == "keep":
                kept += o.new_token_ids
    assert engine.abort("drop")
    while engine.has_unfinished_requests():
        for o in engine.step():
            assert o.request_id == "keep"
            kept += o.new_token_ids
    assert kept == want.token_ids
    assert engine.pool.num_used_blocks == 0


def test_preemption_and_prefix_hits_under_async_steps(model: LoadedModel) -> None:
    shared = PROMPTS[2] + " caught a fish that could speak, and it said:"
    requests = {
        f"r{i}": (shared + suffix, greedy(10, ignore_eos=True))
        for i, suffix in enumerate([" hello", " listen", " run", " wait"])
    }
    first, rest = dict(list(requests.items())[:1]), dict(list(requests.items())[1:])
    roomy, _ = engine_over(model, async_scheduling=False, num_kv_blocks=64)
    want = run(roomy, first) | run(roomy, rest)
    # Room for one sequence and a block: three at once, even sharing their prompt's blocks,
    # do not fit. The first request runs alone and leaves its prompt's blocks in the prefix
    # cache for the others.
    longest = max(
        len(roomy.tokenizer.encode(p, add_special_tokens=True)) for p, _ in requests.values()
    )
    tight, backend = engine_over(model, num_kv_blocks=-(-(longest + 10) // 16) + 1)
    got = run(tight, first) | run(tight, rest)
    assert got == want
    assert tight.scheduler.num_preemptions > 0
    assert tight.pool.stats.hits > 0
    assert backend.placeholders > 0
    assert tight.pool.num_used_blocks == 0


def test_priority_preemption_under_async_steps(model: LoadedModel) -> None:
    """An interactive request preempts a batch one whose next token is still on the device;
    every request's tokens are those it gets alone."""
    requests = {
        f"bulk{i}": (prompt, greedy(10, ignore_eos=True)) for i, prompt in enumerate(PROMPTS[:3])
    }
    chat = {"chat": (PROMPTS[2] * 2, greedy(6, ignore_eos=True))}
    roomy, _ = engine_over(model, async_scheduling=False)
    want = {rid: run(roomy, {rid: request}) for rid, request in (requests | chat).items()}
    # Room for the three batch requests, not for them and the long interactive prompt.
    prompt_len = len(roomy.tokenizer.encode(chat["chat"][0], add_special_tokens=True))
    engine, backend = engine_over(model, num_kv_blocks=-(-prompt_len // 16) + 2)
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params, scheduling=Scheduling(priority=2))
    got: dict[str, list[int]] = {rid: [] for rid in want}
    for step in range(1000):
        if step == 3:
            engine.add_request("chat", *chat["chat"], scheduling=Scheduling(priority=0))
        if step > 3 and not engine.has_unfinished_requests():
            break
        for out in engine.step():
            got[out.request_id] += out.new_token_ids
    assert got == {rid: result[rid].token_ids for rid, result in want.items()}
    assert engine.scheduler.num_preemptions >= 1
    assert backend.placeholders > 0
    assert engine.pool.num_used_blocks == 0
