"""Tiny random GGUF models of each architecture family in shapes the CUDA kernels run (Q8_0
matrices, head_dim 64), written in a test's temporary folder; and, as llama.cpp's Q4_K_M files
have them, families whose stacked tensors (q/k/v, gate/up) are stored in different block types.

The committed family fixtures (tests/fixtures/families, checked against transformers on the
CPU) are F16/F32 with head_dim 16/32 and a 112-wide FFN, which the CUDA backend does not read;
these carry the same features (llama.cpp's tensor names and metadata keys) so that the CUDA
backend can be checked against the NumPy backend on the very same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import gguf
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ember.kernels.quant_gemv import QuantType
from tests.gpu.quant_data import random_weight

N_LAYERS = 2
D_MODEL = 256
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = D_MODEL // N_HEADS
FFN_DIM = 512
VOCAB = 320
CONTEXT = 512
# Query and key weights scaled up: attention scores with a std of ~4, so a token's output
# depends on which keys it sees and where (RoPE, the window) rather than averaging them all.
QK_GAIN = 2.0


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    architecture: str
    rope_base: float
    tied: bool = False
    rope_freqs: bool = False
    sliding_window: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    head_dim: int = HEAD_DIM
    n_heads: int = N_HEADS
    # Block types other than Q8_0, by tensor role ("attn_v": "Q6_K", ...).
    types: tuple[tuple[str, str], ...] = ()


FAMILIES = (
    # Llama 3's base is 500000; at a tiny model's positions its slow pairs, which the factors
    # divide, hardly turn, so the factors would hardly matter: base 10000 makes them.
    Family("llama3", "llama", 10000.0, rope_freqs=True),
    Family("mistral", "llama", 1000000.0, sliding_window=5),
    Family("qwen2", "qwen2", 1000000.0, tied=True, qkv_bias=True),
    Family("qwen3", "qwen3", 1000000.0, tied=True, qk_norm=True),
)

# Q4_K_M's mix (llama-quantize: Q6_K attn_v and ffn_down in some layers beside Q4_K), and
# gate/up apart too; with fused RoPE (llama3), NEOX RoPE and biases (qwen2), q/k norms (qwen3).
_Q4_K_M: Final = (("attn_q", "Q4_K"), ("attn_k", "Q4_K"), ("attn_v", "Q6_K"))
_SPLIT_GATE_UP: Final = (("ffn_gate", "Q4_K"), ("ffn_up", "Q5_0"), ("ffn_down", "Q6_K"))
MIXED_FAMILIES = (
    Family("llama3-q4_k_m", "llama", 10000.0, rope_freqs=True, types=_Q4_K_M + _SPLIT_GATE_UP),
    Family("qwen2-mixed", "qwen2", 1e6, tied=True, qkv_bias=True, types=(("attn_k", "Q5_K"),)),
    Family("qwen3-q4_k_m", "qwen3", 1e6, tied=True, qk_norm=True, types=_Q4_K_M),
)
# What gguf-py quantizes itself; the other types are random blocks with real-looking scales.
_GGUF_QUANTIZES: Final = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def write_family_model(family: Family, path: Path, seed: int = 0) -> Path:
    """A GGUF of `family` with random weights: Q8_0 matrices (the embedding too), F32 norms,
    biases, q/k norm weights and RoPE frequency factors."""
    rng = np.random.default_rng(seed)
    arch = family.architecture
    q_dim = family.n_heads * family.head_dim
    kv_dim = N_KV_HEADS * family.head_dim
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_name(f"tiny {family.name} for the CUDA tests")
    writer.add_uint32(f"{arch}.block_count", N_LAYERS)
    writer.add_uint32(f"{arch}.context_length", CONTEXT)
    writer.add_uint32(f"{arch}.embedding_length", D_MODEL)
    writer.add_uint32(f"{arch}.feed_forward_length", FFN_DIM)
    writer.add_uint32(f"{arch}.attention.head_count", family.n_heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", N_KV_HEADS)
    writer.add_uint32(f"{arch}.attention.key_length", family.head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", family.head_dim)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32(f"{arch}.rope.freq_base", family.rope_base)
    writer.add_uint32(f"{arch}.vocab_size", VOCAB)
    if family.sliding_window is not None:
        writer.add_uint32(f"{arch}.attention.sliding_window", family.sliding_window)

    types = dict(family.types)

    def matrix(name: str, rows: int, cols: int, gain: float = 1.0) -> None:
        values = (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)
        role = name.split(".")[-2]
        kind = GGMLQuantizationType[types.get(role, "Q8_0")]
        if kind.name in _GGUF_QUANTIZES:
            blocks = gguf.quants.quantize(values, kind)
        else:
            blocks = random_weight(QuantType[kind.name], rows, cols, int(rng.integers(1 << 30)))
        writer.add_tensor(name, blocks, raw_dtype=kind)

    def vector(name: str, values: npt.NDArray[np.float64]) -> None:
        writer.add_tensor(name, values.astype(np.float32))

    matrix("token_embd.weight", VOCAB, D_MODEL, np.sqrt(D_MODEL))
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", rng.uniform(0.8, 1.2, D_MODEL))
        matrix(p + "attn_q.weight", q_dim, D_MODEL, QK_GAIN)
        matrix(p + "attn_k.weight", kv_dim, D_MODEL, QK_GAIN)
        matrix(p + "attn_v.weight", kv_dim, D_MODEL)
        if family.qkv_bias:
            vector(p + "attn_q.bias", rng.standard_normal(q_dim))
            vector(p + "attn_k.bias", rng.standard_normal(kv_dim))
            vector(p + "attn_v.bias", rng.standard_normal(kv_dim) * 0.5)
        if family.qk_norm:
            vector(p + "attn_q_norm.weight", rng.uniform(1.0, 2.5, family.head_dim))
            vector(p + "attn_k_norm.weight", rng.uniform(1.0, 2.5, family.head_dim))
        matrix(p + "attn_output.weight", D_MODEL, q_dim)
        vector(p + "ffn_norm.weight", rng.uniform(0.8, 1.2, D_MODEL))
        matrix(p + "ffn_gate.weight", FFN_DIM, D_MODEL)
        matrix(p + "ffn_up.weight", FFN_DIM, D_MODEL)
        matrix(p + "ffn_down.weight", D_MODEL, FFN_DIM)
    vector("output_norm.weight", rng.uniform(0.8, 1.2, D_MODEL))
    if not family.tied:
        matrix("output.weight", VOCAB, D_MODEL)
    if family.rope_freqs:
        # As Llama 3.1's: 1 for the fastest pair, up to 8 for the slowest.
        vector("rope_freqs.weight", np.linspace(1.0, 8.0, family.head_dim // 2))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
