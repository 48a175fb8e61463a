"""Each architecture family's forward pass against transformers' logits on the same weights.

The fixtures (tests/fixtures/families/, made by scripts/make_family_fixtures.py) are tiny
random-weight models converted by llama.cpp's own converter: Llama 3 with its RoPE frequency
factors, Qwen2 with q/k/v biases, Qwen3 with per-head q/k norms and wide heads, and a Mistral
with a sliding window shorter than the prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember import LLM, SamplingParams
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.errors import ModelFormatError
from ember.model.config import ModelConfig
from ember.model.gguf_file import GGUFFile
from ember.model.llama_weights import LlamaWeights
from ember.model.loader import load_model
from ember.model.numpy_llama import NumpyLlama

from .test_numpy_llama import PagedSeq as _PagedSeq
from .test_numpy_llama import make_batch

FIXTURES = Path(__file__).parent.parent / "fixtures" / "families"
FAMILIES = ("llama3", "qwen2", "qwen3", "mistral")
# float32 arithmetic on both sides, in different orders: the differences are rounding (at most
# 6e-6 measured, on logits of magnitude ~5; dropping a feature moves them by 1 or more).
RTOL, ATOL = 1e-5, 5e-5


class PagedSeq(_PagedSeq):
    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.done


def _model(name: str) -> NumpyLlama:
    gguf = GGUFFile.open(FIXTURES / f"{name}.gguf")
    config = ModelConfig.from_gguf(gguf)
    model = NumpyLlama(config, LlamaWeights.load(gguf, config))
    model.allocate_kv_cache(num_blocks=64, block_size=4)
    return model


def _golden(name: str) -> list[tuple[list[int], np.ndarray]]:
    data = np.load(FIXTURES / f"{name}.npz")
    count = len([k for k in data.files if k.startswith("prompt_")])
    return [(data[f"prompt_{i}"].tolist(), data[f"logits_{i}"]) for i in range(count)]


def test_flags_come_from_the_files() -> None:
    configs = {
        name: ModelConfig.from_gguf(GGUFFile.open(FIXTURES / f"{name}.gguf")) for name in FAMILIES
    }
    llama3, qwen2, qwen3, mistral = (configs[n] for n in FAMILIES)
    assert llama3.rope.freq_factors is not None and llama3.rope.style == "adjacent"
    assert len(set(llama3.rope.freq_factors)) == 3  # unscaled, smoothed and divided by 8
    assert not llama3.tied_embeddings and not llama3.qkv_bias and not llama3.qk_norm
    assert qwen2.architecture == "qwen2" and qwen2.qkv_bias and not qwen2.qk_norm
    assert qwen2.rope.style == "halves" and qwen2.tied_embeddings
    assert qwen3.architecture == "qwen3" and qwen3.qk_norm and not qwen3.qkv_bias
    assert qwen3.head_dim == 32 and qwen3.q_dim == 128 and qwen3.d_model == 64
    assert mistral.architecture == "llama" and mistral.sliding_window == 5
    assert all(c.sliding_window is None for c in (llama3, qwen2, qwen3))


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_logits_match_transformers(name: str) -> None:
    model = _model(name)
    for prompt, want in _golden(name):
        seq = PagedSeq(prompt, blocks=[7, 2, 30, 11, 5, 40, 9, 21][: (len(prompt) + 3) // 4])
        got = model.forward(make_batch([(seq, len(prompt))], all_logits=True))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", FAMILIES)
def test_chunked_prefill_and_decode_match_transformers(name: str) -> None:
    """Chunks and single-token steps over scattered blocks, all prompts in one batch: the
    decode path (and a sliding window reaching back over earlier chunks) as well."""
    model = _model(name)
    golden = _golden(name)
    seqs = [
        PagedSeq(prompt, blocks=list(range(12 * i + 11, 12 * i - 1, -1)))
        for i, (prompt, _) in enumerate(golden)
    ]
    while True:
        work = [(i, s, 3 if s.done == 0 else 1) for i, s in enumerate(seqs) if s.remaining]
        if not work:
            break
        out = model.forward(make_batch([(s, min(n, s.remaining)) for _, s, n in work]))
        for row, (i, seq, _) in enumerate(work):
            np.testing.assert_allclose(out[row], golden[i][1][seq.done - 1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_generates_transformers_greedy_tokens(name: str) -> None:
    """Through the real loader and engine: the prompts batched, then decoded together."""
    model = load_model(FIXTURES / f"{name}.gguf", "cpu", show_progress=False)
    llm = LLM(engine=LLMEngine(EngineConfig(show_progress=False), model=model))
    data = np.load(FIXTURES / f"{name}.npz")
    prompts = [p for p, _ in _golden(name)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    for i, out in enumerate(outputs):
        assert out.token_ids == data[f"greedy_{i}"].tolist()


def test_cuda_backend_refuses_the_fixtures_tiny_heads_not_their_features() -> None:
    """The families' features all run on the GPU (tests/gpu/test_cuda_families.py); these
    fixtures' heads of 16 and 32 have no attention kernel, which the refusal names."""
    from ember.model.cuda.llama import CudaLlama

    for name in FAMILIES:
        gguf = GGUFFile.open(FIXTURES / f"{name}.gguf")
        config = ModelConfig.from_gguf(gguf)
        with pytest.raises(ModelFormatError, match="--device cpu") as error:
            CudaLlama.load(gguf, config)
        message = str(error.value)
        assert f"head_dim {config.head_dim}" in message and str(gguf.path) in message
