"""A tiny random Llama (config + weights) and a dense, unpaged reference forward pass."""

from __future__ import annotations

import numpy as np

from ember.model.config import ModelConfig, RopeConfig
from ember.model.llama_weights import LayerWeights, LlamaWeights
from ember.model.numpy_llama import rms_norm, silu_mul, softmax_rows
from ember.model.rope import RotaryEmbedding

TINY = ModelConfig(
    architecture="llama",
    name="tiny",
    n_layers=2,
    d_model=32,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    ffn_dim=48,
    vocab_size=64,
    context_length=256,
    rms_eps=1e-5,
    rope=RopeConfig(base=10000.0, dim=8),
    tied_embeddings=True,
)


def tiny_weights(seed: int = 0, config: ModelConfig = TINY) -> LlamaWeights:
    rng = np.random.default_rng(seed)
    c = config

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def out_in(m: np.ndarray) -> np.ndarray:  # [in, out] drawn, stored as LayerWeights keeps it
        return np.ascontiguousarray(m.T)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(c.d_model)).astype(np.float32)

    embd = mat(c.vocab_size, c.d_model)
    layers = tuple(
        LayerWeights(
            attn_norm=norm(),
            wqkv=out_in(mat(c.d_model, c.q_dim + 2 * c.kv_dim)),
            wo=out_in(mat(c.q_dim, c.d_model)),
            ffn_norm=norm(),
            w_gate_up=out_in(mat(c.d_model, 2 * c.ffn_dim)),
            w_down=out_in(mat(c.ffn_dim, c.d_model)),
        )
        for _ in range(c.n_layers)
    )
    return LlamaWeights(token_embd=embd, layers=layers, output_norm=norm(), lm_head=embd)


def dense_logits(
    weights: LlamaWeights, tokens: list[int], config: ModelConfig = TINY
) -> np.ndarray:
    """Logits at every position of one sequence, with plain causal attention (no KV cache)."""
    c = config
    rope = RotaryEmbedding(c.rope, c.context_length)
    cos, sin = rope.cos_sin(np.arange(len(tokens), dtype=np.int32))
    x = weights.token_embd[tokens].astype(np.float64).astype(np.float32)
    n, group = len(tokens), c.n_heads // c.n_kv_heads
    causal = np.triu(np.ones((n, n), dtype=bool), k=1)
    for lw in weights.layers:
        h = rms_norm(x, lw.attn_norm, c.rms_eps)
        qkv = h @ lw.wqkv.T
        q = rope.apply(qkv[:, : c.q_dim].reshape(n, c.n_heads, c.head_dim), cos, sin)
        k = rope.apply(
            qkv[:, c.q_dim : c.q_dim + c.kv_dim].reshape(n, c.n_kv_heads, c.head_dim), cos, sin
        )
        v = qkv[:, c.q_dim + c.kv_dim :].reshape(n, c.n_kv_heads, c.head_dim)
        out = np.empty_like(q)
        for head in range(c.n_heads):
            kv = head // group
            scores = (q[:, head] @ k[:, kv].T) / np.sqrt(c.head_dim)
            scores[causal] = -np.inf
            out[:, head] = softmax_rows(scores.astype(np.float32)) @ v[:, kv]
        x = x + out.reshape(n, c.q_dim) @ lw.wo.T
        h = rms_norm(x, lw.ffn_norm, c.rms_eps)
        gu = h @ lw.w_gate_up.T
        x = x + silu_mul(gu[:, : c.ffn_dim], gu[:, c.ffn_dim :]) @ lw.w_down.T
    result: np.ndarray = rms_norm(x, weights.output_norm, c.rms_eps) @ weights.lm_head.T
    return result
