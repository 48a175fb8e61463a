"""Jump-forward decoding on the tiny fixture model: tokens a grammar forces are taken without
sampling, several computed in one step, on the host sampler and on the device path with steps
in flight (whose rows for those sequences are dropped), with mask workers, and with every
limit a sequence has (max_tokens, stop strings, logprobs)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pytest

from ember.engine import llm_engine
from ember.engine.config import EngineConfig
from ember.engine.forced_tokens import force
from ember.engine.llm_engine import LLMEngine
from ember.engine.request_output import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.model.loader import LoadedModel
from tests.engine.reference_sampling import engine_over
from tests.engine.test_structured_output import JSON, check, constrained, run

if TYPE_CHECKING:
    from llguidance import LLMatcher


def outputs_and_steps(
    engine: LLMEngine, prompt: str, params: SamplingParams
) -> tuple[list[RequestOutput], int]:
    engine.add_request(1, prompt, params)
    outputs: list[RequestOutput] = []
    steps = 0
    while engine.has_unfinished_requests():
        outputs += engine.step()
        steps += 1
    return outputs, steps


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [token for output in outputs for token in output.new_token_ids]


def test_forced_tokens_take_no_step_of_their_own_on_the_host_and_the_device_path(
    tiny_model: LoadedModel,
) -> None:
    """The schema's keys and punctuation are forced: with jump-forward a JSON output takes far
    fewer steps than it has tokens, and still parses; without, a step a token."""
    tokenizer = tiny_model.tokenizer
    for make in (
        lambda **o: LLMEngine(EngineConfig(num_kv_blocks=64, show_progress=False, **o), tiny_model),
        lambda **o: engine_over(tiny_model, **o)[0],
    ):
        for seed in range(3):
            params = constrained(JSON, seed)
            jumped, jumped_steps = outputs_and_steps(make(), "Data:", params)
            sampled, sampled_steps = outputs_and_steps(make(jump_forward=False), "Data:", params)
            for outputs in (jumped, sampled):
                check(JSON, tokenizer.decode(tokens_of(outputs)))
            assert sampled_steps >= len(tokens_of(sampled))
            assert jumped_steps < 0.8 * len(tokens_of(jumped)), (jumped_steps, tokens_of(jumped))
            # Several tokens arrive in one output: the sampled one and those forced after it.
            assert max(len(output.new_token_ids) for output in jumped) > 2


def test_steps_in_flight_drop_their_rows_and_give_the_synchronous_tokens(
    tiny_model: LoadedModel,
) -> None:
    """With steps overlapping, a sequence's row in the step launched before its forced tokens
    were known is dropped; the tokens equal the synchronous engine's, beside a free sequence and
    beside one with penalties (whose steps are collected at once, not overlapped)."""
    requests = {seed: ("Go:", constrained(JSON, seed)) for seed in range(4)}
    requests[10] = ("Free", SamplingParams(max_tokens=30, seed=3, ignore_eos=True))
    for extra in ({}, {"presence_penalty": 0.5}):
        mixed = dict(requests)
        mixed[11] = ("Penalised", SamplingParams(max_tokens=20, seed=4, **extra))
        asynchronous, backend = engine_over(tiny_model, max_num_seqs=8)
        synchronous, _ = engine_over(tiny_model, max_num_seqs=8, async_scheduling=False)
        out = run(asynchronous, dict(mixed))
        assert out == run(synchronous, dict(mixed))
        for seed in range(4):
            check(JSON, tiny_model.tokenizer.decode(out[seed]))
        assert backend.placeholders > 0  # steps did overlap
        assert all(not seq.num_pending for seq in asynchronous.scheduler.running)


def test_mask_workers_find_the_forced_tokens_and_give_the_engines_outputs(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence on a mask worker has its mirror find its forced tokens beside its mask, off
    the engine's thread (which finds them only for sequences no worker holds yet); the outputs
    are those of an engine without workers."""
    requests = {seed: ("Go:", constrained(JSON, seed)) for seed in range(6)}
    alone, _ = engine_over(tiny_model, max_num_seqs=8, mask_workers=0)
    expected = run(alone, dict(requests))
    on_engine_thread: list[int] = []

    def counted(grammar: LLMatcher, room: int) -> list[int]:
        on_engine_thread.append(room)
        return force(grammar, room)

    monkeypatch.setattr(llm_engine, "force", counted)
    workers, _ = engine_over(tiny_model, max_num_seqs=8, mask_workers=2)
    try:
        assert workers.mask_workers is not None and workers.mask_workers.wait_ready(30)
        out = run(workers, dict(requests))
    finally:
        workers.close()
    assert out == expected
    # Each sequence's first token is collected before a worker holds its mirror.
    assert len(on_engine_thread) <= len(requests), on_engine_thread
    assert sum(map(len, out.values())) > 10 * len(requests)


def test_forced_tokens_stop_at_max_tokens_and_at_a_stop_string(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    engine, _ = engine_over(tiny_model)
    outputs, _ = outputs_and_steps(
        engine, "Data:", dataclasses.replace(constrained(JSON, 1), max_tokens=4)
    )
    assert len(tokens_of(outputs)) == 4 and outputs[-1].finish_reason is FinishReason.LENGTH
    assert outputs[-1].num_output_tokens == 4
    # `"ok"` is a key the schema forces after the id's digits.
    params = dataclasses.replace(constrained(JSON, 1), stop=('"ok"',))
    outputs, _ = outputs_and_steps(engine, "Data:", params)
    text = "".join(output.new_text for output in outputs)
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert text.startswith('{"id"') and '"ok"' not in text, text
    assert tokenizer.decode(tokens_of(outputs)).startswith(text)


def test_a_sequence_that_asks_for_logprobs_samples_every_token(tiny_model: LoadedModel) -> None:
    engine, _ = engine_over(tiny_model)
    outputs, steps = outputs_and_steps(
        engine, "Data:", dataclasses.replace(constrained(JSON, 2), logprobs=1)
    )
    tokens = tokens_of(outputs)
    assert [entry.token_id for o in outputs for entry in o.new_logprobs] == tokens
    assert steps >= len(tokens)
    json.loads(tiny_model.tokenizer.decode(tokens))
