"""tests/fixtures/tiny_llama.gguf: what its script writes, and the properties the engine's
invariance tests rely on (scripts/make_tiny_model.py says why each holds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from ember import LLM, SamplingParams
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.model.loader import LoadedModel

from .conftest import TINY_MODEL_PATH

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_model.py"

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Hello", "a"]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tiny_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_fixture_is_what_the_script_writes(tmp_path: Path) -> None:
    fresh = tmp_path / "tiny_llama.gguf"
    script().write(fresh)
    assert fresh.read_bytes() == TINY_MODEL_PATH.read_bytes(), (
        f"{TINY_MODEL_PATH} is stale: python scripts/make_tiny_model.py --out {TINY_MODEL_PATH}"
    )
    assert TINY_MODEL_PATH.stat().st_size < 100_000


def test_loads_with_a_real_tokenizer_and_chat_template(tiny_model: LoadedModel) -> None:
    config, tokenizer = tiny_model.config, tiny_model.tokenizer
    assert (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads) == (2, 32, 4, 2)
    assert not config.tied_embeddings
    assert tokenizer.vocab_size == config.vocab_size == 320
    text = "Once upon a time, in a small village: 1, 2, 3."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text)  # the merges do merge
    assert tokenizer.encode("<|im_end|>") == [tokenizer.eos_id]
    assert tiny_model.chat_template is not None


def test_greedy_text_is_printable_context_dependent_and_never_ends(
    tiny_model: LoadedModel,
) -> None:
    llm = LLM(engine=LLMEngine(EngineConfig(show_progress=False), model=tiny_model))
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=48, temperature=0.0))
    for out in outs:
        assert out.finish_reason == "length"
        assert all(c == "\n" or " " <= c <= "~" for c in out.text), out.text
        assert len(set(out.token_ids)) > 8, out.text  # not stuck repeating a token or two
    assert len({tuple(out.token_ids) for out in outs}) == len(PROMPTS)
    sampled = llm.generate(PROMPTS, SamplingParams(max_tokens=48, temperature=1.0, seed=3))
    assert all(out.finish_reason == "length" for out in sampled)
