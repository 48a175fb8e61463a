"""tests/fixtures/tiny_kquant.gguf, a Llama in a K-quant file's mix of block types, on the CPU:
what its script writes, that the engine runs it, and that its logits and greedy tokens are
those of a float32 forward pass over gguf-py's own dequantisation of the same file."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType

from ember import LLM, SamplingParams
from ember.engine.config import EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.errors import ModelFormatError
from ember.model.gguf_file import GGUFFile
from ember.model.llama_weights import LlamaWeights
from ember.model.loader import LoadedModel, load_model
from ember.model.model_info import describe_model
from ember.model.numpy_llama import NumpyLlama

from .test_numpy_llama import PagedSeq, make_batch

T = GGMLQuantizationType
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_kquant_model.py"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_kquant.gguf"
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):"]
F64 = npt.NDArray[np.float64]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_kquant_model", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(FIXTURE, "cpu", show_progress=False)


class Reference:
    """A dense float64 Llama forward pass over weights gguf-py dequantised (no Ember code)."""

    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(path)
        self.w: dict[str, F64] = {
            t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
            for t in reader.tensors
        }
        self.kinds = {t.name: T(t.tensor_type) for t in reader.tensors}
        field = reader.fields
        self.n_layers = int(field["llama.block_count"].contents())
        self.n_heads = int(field["llama.attention.head_count"].contents())
        self.n_kv_heads = int(field["llama.attention.head_count_kv"].contents())
        self.eps = float(field["llama.attention.layer_norm_rms_epsilon"].contents())
        self.base = float(field["llama.rope.freq_base"].contents())

    def norm(self, x: F64, name: str) -> F64:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.w[name]

    def rope(self, x: F64) -> F64:
        """GGML's normal RoPE: adjacent pairs (2i, 2i + 1) turned by pos * base^(-2i/dim)."""
        n, _, dim = x.shape
        angle = np.arange(n)[:, None] * self.base ** (-np.arange(0, dim, 2) / dim)
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def logits(self, tokens: list[int]) -> F64:
        """Logits at every position of `tokens`."""
        w, n = self.w, len(tokens)
        x = w["token_embd.weight"][tokens]
        head_dim = x.shape[1] // self.n_heads
        group = self.n_heads // self.n_kv_heads
        future = np.triu(np.ones((n, n), dtype=bool), k=1)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self.norm(x, p + "attn_norm.weight")
            q = self.rope((h @ w[p + "attn_q.weight"].T).reshape(n, self.n_heads, head_dim))
            k = self.rope((h @ w[p + "attn_k.weight"].T).reshape(n, self.n_kv_heads, head_dim))
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_kv_heads, head_dim)
            attended = np.empty_like(q)
            for head in range(self.n_heads):
                scores = q[:, head] @ k[:, head // group].T / np.sqrt(head_dim)
                scores[future] = -np.inf
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                attended[:, head] = scores / scores.sum(axis=1, keepdims=True) @ v[:, head // group]
            x = x + attended.reshape(n, -1) @ w[p + "attn_output.weight"].T
            h = self.norm(x, p + "ffn_norm.weight")
            gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        result: F64 = self.norm(x, "output_norm.weight") @ w["output.weight"].T
        return result


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(FIXTURE)


def test_committed_fixture_is_what_the_script_writes(tmp_path: Path) -> None:
    fresh = tmp_path / "tiny_kquant.gguf"
    script().write(fresh)
    assert fresh.read_bytes() == FIXTURE.read_bytes(), (
        f"{FIXTURE} is stale: python scripts/make_kquant_model.py --out {FIXTURE}"
    )
    assert FIXTURE.stat().st_size < 2_000_000


def test_fixture_mixes_the_types_of_k_quant_files(reference: Reference) -> None:
    kinds = reference.kinds
    assert {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1, T.Q8_0} <= set(kinds.values())
    assert kinds["token_embd.weight"] == T.F16 and kinds["output.weight"] == T.Q6_K
    # Types differ inside the stacked q/k/v and gate/up of one layer.
    assert kinds["blk.0.attn_q.weight"] != kinds["blk.0.attn_v.weight"]
    assert kinds["blk.0.ffn_gate.weight"] != kinds["blk.0.ffn_up.weight"]


def test_logits_match_a_float_reference_at_every_position(
    model: LoadedModel, reference: Reference
) -> None:
    tokens = model.tokenizer.encode("Once upon a time, 1, 2, 3: def f(n): return n")
    weights = LlamaWeights.load(GGUFFile.open(FIXTURE), model.config)
    backend = NumpyLlama(model.config, weights)
    backend.allocate_kv_cache(num_blocks=32, block_size=4)
    seq = PagedSeq(tokens, blocks=[5, 17, 2, 30, 11, 8, 23, 1, 14, 26])
    logits = backend.forward(make_batch([(seq, len(tokens))], all_logits=True))
    expected = reference.logits(tokens)
    assert expected.std() > 0.5  # logits that tell tokens apart, so the comparison means something
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * expected.std())


def test_engine_generates_the_reference_greedy_tokens(
    model: LoadedModel, reference: Reference
) -> None:
    llm = LLM(engine=LLMEngine(EngineConfig(show_progress=False), model=model))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        assert out.finish_reason == "length" and len(out.token_ids) == 12
        prompt_ids = model.tokenizer.encode(prompt)
        # Causal: the logits at each position see only the tokens up to it, so one pass over
        # prompt and continuation gives every step's greedy choice.
        logits = reference.logits(prompt_ids + out.token_ids)
        greedy = np.argmax(logits[len(prompt_ids) - 1 : -1], axis=1)
        assert out.token_ids == greedy.tolist()
    assert len({tuple(out.token_ids) for out in outputs}) == len(PROMPTS)


def test_info_shows_the_quant_mix() -> None:
    text = describe_model(FIXTURE)
    assert "quant mix      MOSTLY_Q4_K_M (general.file_type 15)" in text
    mix = text[text.index("quant mix") :].splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in mix[2:] if line.startswith("  ")}
    # type -> tensors, MB, share of bytes; the largest share first.
    assert rows["Q6_K"][0] == "3" and rows["Q4_K"][0] == "3" and rows["Q2_K"][0] == "2"
    assert rows["F32"][0] == "5" and rows["total"][0] == "21" and rows["total"][2] == "100.0%"
    shares = [float(r[2].rstrip("%")) for name, r in rows.items() if name != "total"]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 0.1
    assert "embedding      F16 (token_embd.weight)" in text
    assert "output head    Q6_K (output.weight)" in text


def test_truncated_file_names_the_cut_tensor(tmp_path: Path) -> None:
    """A download cut short inside the output head: refused at load, with file and tensor."""
    reader = gguf.GGUFReader(FIXTURE)
    head = next(t for t in reader.tensors if t.name == "output.weight")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(FIXTURE.read_bytes()[: head.data_offset + head.n_bytes // 2])
    with pytest.raises(ModelFormatError) as error:
        load_model(cut, "cpu", show_progress=False)
    message = str(error.value)
    assert str(cut) in message and "truncated" in message
    assert "'output.weight' (Q6_K, shape (320, 256))" in message
