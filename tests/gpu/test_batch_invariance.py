"""Batch-invariant mode end to end (issue 21): 16 prompts x 64 tokens, greedy and seeded, give
the same token ids alone and inside batches of 2, 7, 64 and 256 with other prompts around them,
with and without prefix-cache hits, with chunked prefill, asynchronous and synchronous: on the
default model (EMBER_TEST_MODEL, else the installed one) and on the synthetic Llama-8B shape.

One loaded model per module and one alone-reference per model, shared by every batch: the
engines differ only in their EngineConfig, which is cheap to rebuild over a loaded model."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.model.cuda.llama import CudaLlama
from ember.model.loader import LoadedModel, load_model

pytestmark = pytest.mark.gpu

PROMPTS = 16
TOKENS = 64
BLOCK = 16
# Half the target prompts open with one shared prefix of whole KV blocks (prefix-cache hits
# when they run after one another); lengths cross the attention's 256-key tiles.
SHARED_PREFIX = 3 * BLOCK


def targets(vocab: int) -> list[tuple[list[int], SamplingParams]]:
    """The 16 prompts, each greedy and seeded: 32 sequences whose ids must not change."""
    rng = np.random.default_rng(21)
    prefix = rng.integers(3, vocab, SHARED_PREFIX).tolist()
    out = []
    for i in range(PROMPTS):
        length = int(rng.integers(5, 300))
        body = rng.integers(3, vocab, length).tolist()
        prompt = (prefix + body) if i % 2 else body
        out.append((prompt, SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)))
        seeded = SamplingParams(
            max_tokens=TOKENS, temperature=0.8, top_p=0.95, seed=1000 + i, ignore_eos=True
        )
        out.append((prompt, seeded))
    return out


def fillers(vocab: int, count: int, seed: int) -> list[tuple[list[int], SamplingParams]]:
    """Other requests around the targets: other lengths, sampled, stopping at other times."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(3, vocab, int(rng.integers(1, 400))).tolist(),
            SamplingParams(
                max_tokens=int(rng.integers(1, 2 * TOKENS)), temperature=1.0, ignore_eos=True
            ),
        )
        for _ in range(count)
    ]


def engine(model: LoadedModel, **options: object) -> LLMEngine:
    settings: dict[str, object] = {"max_num_seqs": 256, **options}
    config = EngineConfig(
        block_size=BLOCK,
        num_kv_blocks=4096,
        batch_invariant=True,
        show_progress=False,
        **settings,  # type: ignore[arg-type]
    )
    return LLMEngine(config, model=model)


def run(eng: LLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """Every request's ids, all queued at once (the engine batches what fits)."""
    for i, (prompt, params) in enumerate(requests):
        eng.add_request(i, prompt, params)
    out: dict[int, list[int]] = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            out.setdefault(int(o.request_id), []).extend(o.new_token_ids)
    return [out.get(i, []) for i in range(len(requests))]


def mixed(
    wanted: list[tuple[list[int], SamplingParams]], size: int, vocab: int, seed: int
) -> list[list[tuple[list[int], SamplingParams]]]:
    """The targets in batches of `size` (fillers make up the last, and the whole of any batch
    larger than the targets), each target at a random place among the others."""
    rng = np.random.default_rng(seed)
    per = min(size - 1, len(wanted)) if size > 1 else 1
    batches = []
    for start in range(0, len(wanted), per):
        chunk = wanted[start : start + per]
        batch = chunk + fillers(vocab, size - len(chunk), seed + start)
        order = rng.permutation(len(batch))
        batches.append([batch[j] for j in order])
    return batches


# (batch size, engine options): each configuration the issue names, at least once.
CASES = [
    (2, {"async_scheduling": False, "enable_prefix_caching": False}),
    (7, {"max_num_batched_tokens": 64}),  # chunked prefills sharing steps with decodes
    (64, {"enable_prefix_caching": True}),  # the shared prefix hits once a target has run
    (256, {"async_scheduling": True, "max_num_batched_tokens": 2048}),
]


def check_model(model: LoadedModel) -> None:
    assert isinstance(model.backend, CudaLlama)
    vocab = model.config.vocab_size
    wanted = targets(vocab)
    # Alone: one sequence at a time, whole prefills, synchronous, no prefix cache.
    alone_engine = engine(
        model, max_num_seqs=1, enable_prefix_caching=False, async_scheduling=False
    )
    assert alone_engine.model.backend.batch_invariant  # type: ignore[attr-defined]
    alone = [run(alone_engine, [request])[0] for request in wanted]
    assert all(len(ids) == TOKENS for ids in alone)
    failures = []
    for size, options in CASES:
        eng = engine(model, **options)
        for batch in mixed(wanted, size, vocab, seed=size):
            got = run(eng, batch)
            for (prompt, params), ids in zip(batch, got, strict=True):
                if (prompt, params) in wanted:
                    i = wanted.index((prompt, params))
                    if ids != alone[i]:
                        first = next(
                            j for j, (a, b) in enumerate(zip(ids, alone[i], strict=True)) if a != b
                        )
                        failures.append(
                            f"batch {size} {options}: target {i} ({'seeded' if i % 2 else 'greedy'}"
                            f") differs from alone at token {first}"
                        )
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def default_model() -> Iterator[LoadedModel]:
    model = load_model(os.environ.get("EMBER_TEST_MODEL"), "cuda", show_progress=False)
    yield model
    assert isinstance(model.backend, CudaLlama)
    model.backend.close()


def test_default_model_is_batch_invariant(default_model: LoadedModel) -> None:
    check_model(default_model)


@pytest.mark.parametrize(
    "name",
    # The 8B shape; and llama-quantize's Q4_K_M mix of the default model's shape (Q5_0 and Q8_0
    # beside Q4_K and Q6_K, layers whose q/k/v mix types, the super-blocks' S16/S32 tiles).
    ["synthetic:llama-8b-q4_0", "synthetic:smollm2-135m-q4_k_m"],
)
def test_synthetic_shapes_are_batch_invariant(name: str) -> None:
    model = load_model(name, "cuda", show_progress=False)
    try:
        check_model(model)
    finally:
        assert isinstance(model.backend, CudaLlama)
        model.backend.close()


def test_default_mode_is_selectable_and_invariant_mode_changes_the_plan(
    default_model: LoadedModel,
) -> None:
    """The flag reaches the backend both ways, and the invariant plan launches no GEMV and no
    split attention (the default's decode plan does both), so the test above tests something."""
    backend = default_model.backend
    assert isinstance(backend, CudaLlama)
    LLMEngine(
        EngineConfig(num_kv_blocks=512, max_num_seqs=16, batch_invariant=False),
        model=default_model,
    )
    assert not backend.batch_invariant
    default_names = {launch.kernel.name for launch in backend._plan(1, 1)}
    assert any("gemv" in name for name in default_names)
    engine(default_model)
    assert backend.batch_invariant
    names = {launch.kernel.name for launch in backend._plan(1, 1)}
    assert not any("gemv" in name for name in names), names
    assert backend._splits(1) == 1
