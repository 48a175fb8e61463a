"""The engine's device-sampling path (what the CUDA backend takes), driven on the CPU by the real
NumPy forward pass of the tiny fixture model and the NumPy model of sampling.cu's draw."""

from __future__ import annotations

import numpy as np

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.model_runner import sampling_batch
from ember.engine.sampling_params import SamplingParams
from ember.model.backend import DeviceSamplingBackend
from ember.model.loader import LoadedModel
from tests.engine.reference_sampling import engine_over


def run(engine: LLMEngine, requests: dict[str, tuple[str, SamplingParams]]) -> dict[str, list[int]]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    out: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished_requests():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


def test_runner_takes_the_device_path_and_keeps_host_rows_for_logprobs_and_penalties(
    tiny_model: LoadedModel,
) -> None:
    engine, backend = engine_over(tiny_model)
    assert isinstance(backend, DeviceSamplingBackend)
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    with_logprobs = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=2)
    penalised = SamplingParams(
        max_tokens=4, temperature=0.0, ignore_eos=True, repetition_penalty=1.3
    )
    got = run(
        engine,
        {
            "plain": ("The capital of France is", greedy),
            "lp": ("The capital of France is", with_logprobs),
            "pen": ("One two one two one two", penalised),
        },
    )
    assert backend.calls and all(c.host_rows.shape[0] <= 2 for c in backend.calls)
    assert any(c.host_rows.shape[0] == 2 for c in backend.calls)
    # Greedy on the device and greedy on the host agree.
    assert got["plain"] == got["lp"]
    # The penalised row was re-sampled on the host: it matches the CPU engine's own answer.
    cpu = LLMEngine(EngineConfig(num_kv_blocks=64, show_progress=False), model=tiny_model)
    assert run(cpu, {"pen": ("One two one two one two", penalised)})["pen"] == got["pen"]


def test_seeded_device_draws_do_not_depend_on_the_batch(tiny_model: LoadedModel) -> None:
    sampled = SamplingParams(max_tokens=5, temperature=1.0, top_p=0.95, seed=42, ignore_eos=True)
    alone, _ = engine_over(tiny_model)
    crowd, _ = engine_over(tiny_model)
    other = SamplingParams(max_tokens=5, temperature=1.0, ignore_eos=True)
    a = run(alone, {"s": ("Once upon a time", sampled)})["s"]
    b = run(crowd, {"x": ("Hello there", other), "s": ("Once upon a time", sampled)})["s"]
    assert a == b


def test_sampling_batch_maps_params_to_rows(tiny_model: LoadedModel) -> None:
    engine, _ = engine_over(tiny_model)
    engine.add_request("a", "Hi", SamplingParams(temperature=0.0))
    engine.add_request("b", "Hi", SamplingParams(temperature=0.7, top_k=5, seed=9, logprobs=1))
    seqs = [engine._requests[r].seq for r in ("a", "b")]
    batch = sampling_batch(seqs)
    assert batch.temperature.tolist() == [0.0, np.float32(0.7)]
    assert batch.top_k.tolist() == [0, 5]
    assert batch.seeds[1] == 9
    assert batch.host_rows.tolist() == [1]
