"""Llama-family weights from a GGUF, dequantized to float32 NumPy arrays for the CPU backend.

The optional tensors (`ModelConfig.qkv_bias`, `qk_norm`) are None where the model has none."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ember.model.config import ModelConfig

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class LayerWeights:
    # Projections keep GGUF's [out, in] layout, C-contiguous, and run as `(w @ x.T).T`
    # (numpy_llama.linear): with the big matrix as OpenBLAS's plain left operand, the 30
    # layers' projections took 18.5 / 48.6 / 85.9 / 409 ms at 1 / 16 / 64 / 512 rows on the
    # 2-core CI machine kind, against 22.2 / 62.6 / 103.7 / 413 for `x @ w` with w stored
    # [in, out] (2026-12-02).
    attn_norm: F32  # [d_model]
    wqkv: F32  # [q_dim + 2 * kv_dim, d_model]: q, k, v projections stacked (one GEMM)
    wo: F32  # [d_model, q_dim]
    ffn_norm: F32  # [d_model]
    w_gate_up: F32  # [2 * ffn_dim, d_model]: gate and up stacked (one GEMM)
    w_down: F32  # [d_model, ffn_dim]
    bqkv: F32 | None = None  # [q_dim + 2 * kv_dim]: q, k, v biases stacked (Qwen2)
    # [n_heads + n_kv_heads, head_dim]: the RMSNorm weight of each q head, then of each k head
    # (Qwen3's attn_q_norm / attn_k_norm, one [head_dim] vector each, repeated per head).
    qk_norm: F32 | None = None


@dataclass(frozen=True, slots=True)
class LlamaWeights:
    token_embd: F32  # [vocab, d_model]
    layers: tuple[LayerWeights, ...]
    output_norm: F32  # [d_model]
    lm_head: F32  # [vocab, d_model] (GGUF layout); the embedding itself when tied

    @classmethod
    def load(
        cls,
        gguf: GGUFFile,
        config: ModelConfig,
        progress: Callable[[int], None] | None = None,
    ) -> LlamaWeights:
        """Dequantize every tensor; `progress(n)` is called after each layer with n done."""
        c = config
        embd = gguf.load("token_embd.weight", (c.vocab_size, c.d_model))
        layers = []
        for i in range(c.n_layers):
            layers.append(_load_layer(gguf, c, f"blk.{i}."))
            if progress is not None:
                progress(i + 1)
        lm_head = (
            embd if c.tied_embeddings else gguf.load("output.weight", (c.vocab_size, c.d_model))
        )
        return cls(
            token_embd=embd,
            layers=tuple(layers),
            output_norm=gguf.load("output_norm.weight", (c.d_model,)),
            lm_head=lm_head,
        )


def _load_layer(gguf: GGUFFile, c: ModelConfig, p: str) -> LayerWeights:
    bqkv = None
    if c.qkv_bias:
        bqkv = _stacked(
            gguf.load(p + "attn_q.bias", (c.q_dim,)),
            gguf.load(p + "attn_k.bias", (c.kv_dim,)),
            gguf.load(p + "attn_v.bias", (c.kv_dim,)),
        )
    qk_norm = None
    if c.qk_norm:
        qk_norm = _stacked(
            np.tile(gguf.load(p + "attn_q_norm.weight", (c.head_dim,)), (c.n_heads, 1)),
            np.tile(gguf.load(p + "attn_k_norm.weight", (c.head_dim,)), (c.n_kv_heads, 1)),
        )
    return LayerWeights(
        attn_norm=gguf.load(p + "attn_norm.weight", (c.d_model,)),
        wqkv=_stacked(
            gguf.load(p + "attn_q.weight", (c.q_dim, c.d_model)),
            gguf.load(p + "attn_k.weight", (c.kv_dim, c.d_model)),
            gguf.load(p + "attn_v.weight", (c.kv_dim, c.d_model)),
        ),
        wo=_stacked(gguf.load(p + "attn_output.weight", (c.d_model, c.q_dim))),
        ffn_norm=gguf.load(p + "ffn_norm.weight", (c.d_model,)),
        w_gate_up=_stacked(
            gguf.load(p + "ffn_gate.weight", (c.ffn_dim, c.d_model)),
            gguf.load(p + "ffn_up.weight", (c.ffn_dim, c.d_model)),
        ),
        w_down=_stacked(gguf.load(p + "ffn_down.weight", (c.d_model, c.ffn_dim))),
        bqkv=bqkv,
        qk_norm=qk_norm,
    )


def _stacked(*weights: F32) -> F32:
    """GGUF's [out, in] matrices stacked along `out`, as one C-contiguous array."""
    return np.concatenate(weights)
