"""Our NumPy forward pass against Hugging Face transformers on the same GGUF.

Fixtures come from scripts/make_golden_fixtures.py (transformers dequantizes the GGUF to
float32 and runs its own Llama); CI needs neither transformers nor torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.model.forward_batch import ForwardBatch
from ember.model.loader import LoadedModel

FIXTURE = Path(__file__).parent.parent / "fixtures" / "golden_smollm2.npz"
NUM_PROMPTS = 4


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def prefill_logits(model: LoadedModel, tokens: np.ndarray, all_positions: bool) -> np.ndarray:
    backend = model.backend
    block = 16
    n = len(tokens)
    blocks = -(-n // block)
    backend.allocate_kv_cache(blocks + 1, block)
    positions = np.arange(n, dtype=np.int32)
    table = np.arange(blocks, 0, -1, dtype=np.int32)  # reversed: exercises the block table
    batch = ForwardBatch(
        token_ids=tokens.astype(np.int32),
        positions=positions,
        slot_mapping=(table[positions // block] * block + positions % block).astype(np.int32),
        query_starts=np.asarray([0, n], np.int32),
        context_lens=np.asarray([n], np.int32),
        block_tables=table[None, :],
        logits_indices=positions if all_positions else np.asarray([n - 1], np.int32),
    )
    return backend.forward(batch)


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    # Both sides are float32 over identical dequantized weights; differences are summation
    # order only. 2e-3 relative (of the logit range) is far below any token decision.
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, atol=2e-3 * scale, rtol=0)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99999


@pytest.mark.parametrize("index", range(NUM_PROMPTS))
def test_last_position_logits_match_transformers(
    default_model: LoadedModel, golden: dict[str, np.ndarray], index: int
) -> None:
    ours = prefill_logits(default_model, golden[f"prompt_{index}"], all_positions=False)[0]
    ref = golden[f"last_logits_{index}"]
    assert_logits_close(ours, ref)
    assert int(ours.argmax()) == int(ref.argmax())


def test_every_prefill_position_matches_transformers(
    default_model: LoadedModel, golden: dict[str, np.ndarray]
) -> None:
    ours = prefill_logits(default_model, golden["prompt_1"], all_positions=True)
    assert_logits_close(ours, golden["all_logits_1"])


def test_greedy_tokens_match_transformers(
    default_model: LoadedModel, golden: dict[str, np.ndarray]
) -> None:
    engine = LLMEngine(EngineConfig(max_num_batched_tokens=64), model=default_model)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    for i in range(NUM_PROMPTS):  # all at once: batched, with chunked prefill
        engine.add_request(str(i), golden[f"prompt_{i}"].tolist(), params)
    generated: dict[str, list[int]] = {str(i): [] for i in range(NUM_PROMPTS)}
    while engine.has_unfinished_requests():
        for out in engine.step():
            generated[out.request_id] += out.new_token_ids
    for i in range(NUM_PROMPTS):
        assert generated[str(i)] == golden[f"greedy_{i}"].tolist(), f"prompt {i}"
