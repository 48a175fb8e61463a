"""Constrained decoding in the engine, on the tiny fixture model: outputs match their spec on
the host sampler and on the device-sampling path (sampling.cu's NumPy model), constrained
sequences overlap steps as free ones do (their masks computed once their pending token is
taken), and nobody else's tokens change."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from ember.engine.config import EngineConfig
from ember.engine.llm import LLM
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.structured_output import StructuredKind, StructuredOutput
from ember.errors import StructuredOutputError
from ember.model.loader import LoadedModel
from tests.engine.reference_sampling import engine_over

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
        "tag": {"type": "string", "enum": ["alpha", "beta"]},
    },
    "required": ["id", "ok", "tag"],
    "additionalProperties": False,
}
JSON = StructuredOutput.json_schema(SCHEMA)
CHOICE = StructuredOutput.choice(["red", "green", "blue"])
REGEX = StructuredOutput(StructuredKind.REGEX, r"[0-9]{3}-[a-z]{2}")


def run(engine: LLMEngine, requests: dict[int, tuple[str, SamplingParams]]) -> dict[int, list[int]]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    out: dict[int, list[int]] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for output in engine.step():
            out[output.request_id] += output.new_token_ids
            assert not engine.rejected
    return out


def constrained(spec: StructuredOutput, seed: int, temperature: float = 1.0) -> SamplingParams:
    return SamplingParams(max_tokens=60, temperature=temperature, seed=seed, structured=spec)


def check(spec: StructuredOutput, text: str) -> None:
    if spec is JSON:
        value = json.loads(text)
        assert set(value) == {"id", "ok", "tag"} and value["tag"] in ("alpha", "beta")
        assert 0 <= value["id"] <= 999 and isinstance(value["ok"], bool)
    elif spec is CHOICE:
        assert text in ("red", "green", "blue")
    else:
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", text), text


@pytest.mark.parametrize("spec", [JSON, CHOICE, REGEX], ids=["json", "choice", "regex"])
def test_outputs_match_their_spec_on_the_host_and_the_device_path(
    tiny_model: LoadedModel, spec: StructuredOutput
) -> None:
    host = LLMEngine(EngineConfig(num_kv_blocks=64, show_progress=False), model=tiny_model)
    device, _ = engine_over(tiny_model)
    tokenizer = tiny_model.tokenizer
    for engine in (host, device):
        requests = {seed: ("Write it:", constrained(spec, seed)) for seed in range(6)}
        requests[99] = ("Greedy:", constrained(spec, 0, temperature=0.0))
        for ids in run(engine, requests).values():
            check(spec, tokenizer.decode(ids))


def test_constrained_and_free_sequences_overlap_steps_without_changing_free_tokens(
    tiny_model: LoadedModel,
) -> None:
    free = SamplingParams(max_tokens=24, temperature=0.8, seed=5, ignore_eos=True)
    alone_engine, _ = engine_over(tiny_model)
    alone = run(alone_engine, {1: ("Once upon a time", free)})[1]
    mixed_engine, backend = engine_over(tiny_model)
    mixed = run(
        mixed_engine,
        {1: ("Once upon a time", free), 2: ("Data:", constrained(JSON, 3))},
    )
    assert mixed[1] == alone  # the free sequence's tokens do not depend on its neighbour
    check(JSON, tiny_model.tokenizer.decode(mixed[2]))
    # Both decoded from the device's copy of their last token (steps overlapped).
    assert backend.placeholders > 0 and backend.deferred > 0
    # Every step that sampled a constrained row had its mask.
    masked = [call for call in backend.calls if call.mask_rows is not None]
    assert masked and all(call.masks is not None for call in masked)


def test_asynchronous_and_synchronous_scheduling_give_the_same_constrained_tokens(
    tiny_model: LoadedModel,
) -> None:
    requests = {seed: ("Go:", constrained(JSON, seed)) for seed in range(3)}
    requests[7] = ("Free text", SamplingParams(max_tokens=12, seed=1, ignore_eos=True))
    asynchronous, _ = engine_over(tiny_model)
    synchronous, _ = engine_over(tiny_model, async_scheduling=False)
    assert run(asynchronous, dict(requests)) == run(synchronous, dict(requests))


def test_a_preempted_constrained_sequence_resumes_its_grammar(tiny_model: LoadedModel) -> None:
    """Too few KV blocks for all: sequences are preempted and recomputed, and the constrained
    ones still finish valid (their matchers keep the tokens they had)."""
    engine = LLMEngine(
        EngineConfig(num_kv_blocks=20, block_size=4, max_num_seqs=4, show_progress=False),
        model=tiny_model,
    )
    requests = {seed: ("Make it:", constrained(JSON, seed)) for seed in range(4)}
    out = run(engine, requests)
    assert engine.scheduler.num_preemptions > 0
    for ids in out.values():
        check(JSON, tiny_model.tokenizer.decode(ids))


def test_a_spec_that_cannot_compile_is_rejected_by_step_and_raised_by_llm(
    tiny_model: LoadedModel,
) -> None:
    engine = LLMEngine(EngineConfig(num_kv_blocks=64, show_progress=False), model=tiny_model)
    bad = StructuredOutput(StructuredKind.REGEX, "[a-")
    engine.add_request(1, "Hi", SamplingParams(max_tokens=4, structured=bad))
    engine.add_request(2, "Hi", SamplingParams(max_tokens=4, temperature=0.0))
    rejected: list[int] = []
    finished: list[int] = []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        rejected += [request_id for request_id, _ in engine.rejected]
        finished += [output.request_id for output in outputs if output.finished]
    assert rejected == [1] and finished == [2]
    llm = LLM(engine=engine)
    with pytest.raises(StructuredOutputError, match="unclosed"):
        llm.generate("Hi", SamplingParams(max_tokens=4, structured=bad))
    assert not engine.has_unfinished_requests()


def test_an_aborted_request_leaves_nothing_compiling(tiny_model: LoadedModel) -> None:
    engine, _ = engine_over(tiny_model)
    spec = StructuredOutput.json_schema({"type": "array", "items": {"type": "integer"}})
    engine.add_request(1, "Numbers:", SamplingParams(max_tokens=8, structured=spec))
    assert engine.abort(1)
    assert not engine.has_unfinished_requests()
    engine.step()
    assert not engine.rejected and not engine.scheduler.num_unfinished


def test_constrained_sequences_overlap_steps_with_masks_after_their_token(
    tiny_model: LoadedModel,
) -> None:
    """With steps overlapping, every running constrained sequence decodes in every step from
    the device's copy of its last token: the step's forward pass is launched first and its
    masks are computed once that token has reached the matchers. A mask computed before would
    allow the previous position's tokens: the outputs would break their spec or differ from
    the synchronous engine's (seeded draws depend only on the sequence and its step)."""
    requests = {seed: ("Go:", constrained(JSON, seed)) for seed in range(8)}
    engine, backend = engine_over(tiny_model, max_num_seqs=8)
    out = run(engine, dict(requests))
    rows = [
        int((call.mask_rows >= 0).sum()) for call in backend.calls if call.mask_rows is not None
    ]
    assert rows.count(8) > 5  # all eight in one step, step after step (no cohorts)
    assert backend.deferred > 5 and backend.placeholders > 5 * 8
    for ids in out.values():
        check(JSON, tiny_model.tokenizer.decode(ids))
    synchronous, reference = engine_over(tiny_model, max_num_seqs=8, async_scheduling=False)
    assert run(synchronous, dict(requests)) == out
    assert reference.deferred == 0 and reference.placeholders == 0


def test_a_constrained_step_returns_with_the_next_forward_pass_launched(
    tiny_model: LoadedModel,
) -> None:
    """A constrained step's sampling is queued only once its masks are computed, late in the
    call; the call then launches the next step's forward pass before it returns, so the device
    computes while the caller handles the outputs (else it would idle until the next call).
    Never more than one such pass waits, and the tokens stay the synchronous engine's."""
    requests = {seed: ("Go:", constrained(JSON, seed)) for seed in range(4)}
    engine, backend = engine_over(tiny_model, max_num_seqs=4)
    for seed, (prompt, params) in requests.items():
        engine.add_request(seed, prompt, params)
    out: dict[int, list[int]] = {seed: [] for seed in requests}
    waiting_at_return = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            out[output.request_id] += output.new_token_ids
        waiting_at_return.append(backend.awaiting)
    assert max(waiting_at_return) == 1
    assert waiting_at_return.count(1) > len(waiting_at_return) // 2
    synchronous, _ = engine_over(tiny_model, max_num_seqs=4, async_scheduling=False)
    assert run(synchronous, dict(requests)) == out


def test_masks_are_cut_to_a_model_with_fewer_rows_than_tokens(tiny_model: LoadedModel) -> None:
    """A file may list more tokens than the model has rows: masks are the model's width (the
    logits'), and allow no token beyond its rows."""
    from ember.engine.grammar import GrammarCompiler, allowed_tokens, mask_words

    tokenizer = tiny_model.tokenizer
    full = GrammarCompiler(tokenizer)
    rows = tokenizer.vocab_size - 37
    cut = GrammarCompiler(tokenizer, rows)
    spec = StructuredOutput(StructuredKind.REGEX, ".+")
    wide = np.zeros((1, full.mask_words), np.int32)
    narrow = np.zeros((2, mask_words(rows)), np.int32)
    full.fill_masks([full.matcher(spec)], wide)
    cut.fill_masks([cut.matcher(spec), cut.matcher(spec)], narrow)
    allowed = allowed_tokens(wide[0], tokenizer.vocab_size)
    for row in narrow:
        np.testing.assert_array_equal(allowed_tokens(row, rows), allowed[:rows])
        assert not allowed_tokens(row, mask_words(rows) * 32)[rows:].any()


def test_a_spec_is_compiled_once_per_lexer_group_and_every_group_masks_alike(
    tiny_model: LoadedModel,
) -> None:
    """Copies of one compile share its lexer, whose lock serialises their masks: an engine's
    compiler compiles a spec once for its first sequence, then up to `lexer_groups` times in
    all on its thread while copies serve, and hands out copies of the compiles in turn; each
    gives the same masks."""
    from ember.engine.grammar import GrammarCompiler

    compiles: list[StructuredOutput] = []

    class Counting(GrammarCompiler):
        def _compile(self, spec: StructuredOutput):  # type: ignore[no-untyped-def]
            compiles.append(spec)
            return super()._compile(spec)

    tokenizer = tiny_model.tokenizer
    grammars = Counting(tokenizer, lexer_groups=3)
    matchers = [grammars.submit(JSON).result()]
    assert len(compiles) == 1
    deadline = time.monotonic() + 30
    while len(compiles) < 3 and time.monotonic() < deadline:
        matchers.append(grammars.submit(JSON).result())  # a copy at once, the groups grow
        time.sleep(0.01)
    matchers += [grammars.submit(JSON).result() for _ in range(5)]
    time.sleep(0.1)
    assert compiles == [JSON] * 3
    first = tokenizer.encode('{"', add_special_tokens=False)
    masks = np.zeros((len(matchers), grammars.mask_words), np.int32)
    for matcher in matchers:
        assert matcher.consume_tokens(first)
    grammars.fill_masks(matchers, masks)
    assert masks.any() and (masks == masks[0]).all()
    with pytest.raises(ValueError, match="at least 1"):
        GrammarCompiler(tokenizer, lexer_groups=0)
