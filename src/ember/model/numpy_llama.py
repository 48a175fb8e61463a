"""The Llama-family forward pass in NumPy: the CPU backend and the reference for every GPU kernel.

One pass for every supported architecture; `ModelConfig`'s flags and the optional weights
(q/k/v biases, per-head q/k norms, RoPE layout and frequency factors, a sliding window) are
the only differences.

Weights are float32 (dequantized once at load); the KV cache is a float32 pool of slots,
`[n_layers, n_slots, n_kv_heads, head_dim]`, addressed by slot = block_id * block_size + offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ember.errors import EmberError
from ember.model.config import ModelConfig
from ember.model.forward_batch import ForwardBatch
from ember.model.llama_weights import LlamaWeights
from ember.model.rope import RotaryEmbedding

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# A step prefills at most this many prompt tokens by default: SmolLM2-135M prefills 250-500
# tokens/s on a 2-core machine, so a step (which every running stream waits for) stays within
# ~200 ms, at 10-15 % less prefill throughput than 256-token chunks (measured 2026-12-07).
_DEFAULT_PREFILL_TOKENS_PER_STEP = 64


def rms_norm(x: F32, weight: F32, eps: float) -> F32:
    squares = np.einsum("...i,...i->...", x, x)  # one pass, no squared copy
    mean = squares / np.float32(x.shape[-1])
    scale = (1.0 / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    out: F32 = x * scale[..., None]
    out *= weight
    return out


def linear(x: F32, w: F32) -> F32:
    """x @ w.T for w in GGUF's [out, in] layout, computed as (w @ x.T).T (see LayerWeights);
    the result is a transposed (Fortran-ordered) view."""
    out: F32 = np.matmul(w, x.T).T
    return out


def silu_mul(gate: F32, up: F32) -> F32:
    """silu(gate) * up, as gate / (1 + exp(-gate)) * up in one buffer."""
    out: F32 = np.exp(-gate)
    out += np.float32(1.0)
    np.divide(gate, out, out=out)
    out *= up
    return out


def softmax_rows(scores: F32) -> F32:
    """Softmax over the last axis, in place (the result is `scores`)."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def c_ordered(x: F32, rows: int = 4096) -> F32:
    """A C-ordered copy of a Fortran-ordered [T, N] array (a `linear` result), copied in
    blocks of columns: a transposing copy of the whole LM head output in one call runs ~3x
    slower (its writes stride over all N)."""
    out = np.empty(x.shape, np.float32)
    for start in range(0, x.shape[1], rows):
        out[:, start : start + rows] = x[:, start : start + rows]
    return out


@dataclass(frozen=True, slots=True)
class _AttentionPlan:
    """Layer-independent gather indices for one batch, computed once per step."""

    decode_rows: I64  # flat token rows of single-token (decode) sequences
    decode_slots: I64  # [D, max_ctx] cache slots each decode row attends to
    # [D, 1, 1, max_ctx] added to the scores: -inf where the slot is past the context (or
    # before a sliding window), else 0
    decode_bias: F32
    prefill: tuple[tuple[int, int, I64, I64], ...]  # (row start, row end, slots, positions)
    all_decode: bool  # every row decodes, in order: decode_rows is 0..T-1


class NumpyLlama:
    """CPU backend implementing `ForwardBackend`."""

    def __init__(self, config: ModelConfig, weights: LlamaWeights) -> None:
        self._config = config
        self.weights = weights
        self.rope = RotaryEmbedding(config.rope, config.context_length)
        self.k_cache: F32 = np.zeros(
            (config.n_layers, 0, config.n_kv_heads, config.head_dim), np.float32
        )
        self.v_cache: F32 = self.k_cache
        self.block_size = 0

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def device_name(self) -> str:
        return "cpu (numpy)"

    def kv_bytes_per_token(self) -> int:
        c = self._config
        return 2 * c.n_layers * c.kv_dim * 4

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        c = self._config
        shape = (c.n_layers, num_blocks * block_size, c.n_kv_heads, c.head_dim)
        # np.zeros (calloc): pages are still touched only when a slot is first written, and a
        # masked decode key (gathered from slot 0) is never uninitialised NaN/inf: its zero
        # softmax weight would not cancel a NaN value in `probs @ v`.
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        self.block_size = block_size

    def default_kv_cache_bytes(self, max_tokens: int) -> int:
        return min(1 << 30, max_tokens * self.kv_bytes_per_token())

    def default_prefill_tokens_per_step(self) -> int | None:
        return _DEFAULT_PREFILL_TOKENS_PER_STEP

    def set_batch_invariant(self, on: bool) -> None:
        """One pass for every batch; what it promises is docs/batch_invariance.md's CPU row."""

    def reserve(self, max_num_tokens: int, max_num_seqs: int, max_blocks_per_seq: int) -> None:
        """Nothing to preallocate: NumPy allocates each step's activations as it goes."""

    def forward(self, batch: ForwardBatch) -> F32:
        if self.block_size == 0:
            raise EmberError("allocate_kv_cache must be called before forward")
        c, w = self._config, self.weights
        plan = self._plan_attention(batch)
        cos, sin = self.rope.cos_sin(batch.positions)
        slots = batch.slot_mapping.astype(np.int64)
        x = w.token_embd[batch.token_ids]
        qk_heads = c.n_heads + c.n_kv_heads
        for layer_idx, lw in enumerate(w.layers):
            h = rms_norm(x, lw.attn_norm, c.rms_eps)
            qkv = linear(h, lw.wqkv)
            if lw.bqkv is not None:
                qkv = qkv + lw.bqkv
            # q and k normed and rotated together: one [T, heads + kv heads, head_dim] array.
            qk = qkv[:, : c.q_dim + c.kv_dim].reshape(-1, qk_heads, c.head_dim)
            if lw.qk_norm is not None:
                qk = rms_norm(qk, lw.qk_norm, c.rms_eps)
            qk = self.rope.rotate(qk, cos, sin)
            v = qkv[:, c.q_dim + c.kv_dim :].reshape(-1, c.n_kv_heads, c.head_dim)
            self.k_cache[layer_idx, slots] = qk[:, c.n_heads :]
            self.v_cache[layer_idx, slots] = v
            attn = self._attention(layer_idx, qk[:, : c.n_heads], plan)
            x = x + linear(attn.reshape(-1, c.q_dim), lw.wo)
            h = rms_norm(x, lw.ffn_norm, c.rms_eps)
            gate_up = linear(h, lw.w_gate_up)
            x = x + linear(silu_mul(gate_up[:, : c.ffn_dim], gate_up[:, c.ffn_dim :]), lw.w_down)
        last = rms_norm(x[batch.logits_indices], w.output_norm, c.rms_eps)
        return c_ordered(linear(last, w.lm_head))

    def _plan_attention(self, batch: ForwardBatch) -> _AttentionPlan:
        bs = self.block_size
        window = self._config.sliding_window
        starts = batch.query_starts
        decode_rows: list[int] = []
        decode_seqs: list[int] = []
        prefill: list[tuple[int, int, I64, I64]] = []
        for s in range(batch.num_seqs):
            start, end = int(starts[s]), int(starts[s + 1])
            ctx = int(batch.context_lens[s])
            if end - start == 1:
                decode_rows.append(start)
                decode_seqs.append(s)
                continue
            table = batch.block_tables[s, : (ctx + bs - 1) // bs].astype(np.int64)
            slots = (table[:, None] * bs + np.arange(bs)).reshape(-1)[:ctx]
            prefill.append((start, end, slots, batch.positions[start:end].astype(np.int64)))
        if decode_seqs:
            ctx_lens = batch.context_lens[decode_seqs].astype(np.int64)
            max_ctx = int(ctx_lens.max())
            offsets = np.arange(max_ctx, dtype=np.int64)
            tables = batch.block_tables[decode_seqs].astype(np.int64)
            block_idx = np.minimum(offsets // bs, tables.shape[1] - 1)
            decode_slots = tables[:, block_idx] * bs + offsets % bs
            decode_mask = offsets[None, :] >= ctx_lens[:, None]
            if window is not None:
                decode_mask |= offsets[None, :] < ctx_lens[:, None] - window
            decode_slots[decode_mask] = 0
            decode_bias = np.where(decode_mask, np.float32(-np.inf), np.float32(0.0))
        else:
            decode_slots = np.zeros((0, 0), np.int64)
            decode_bias = np.zeros((0, 0), np.float32)
        return _AttentionPlan(
            decode_rows=np.asarray(decode_rows, np.int64),
            decode_slots=decode_slots,
            decode_bias=decode_bias[:, None, None, :],
            prefill=tuple(prefill),
            all_decode=len(decode_rows) == len(batch.token_ids),
        )

    def _attention(self, layer_idx: int, q: F32, plan: _AttentionPlan) -> F32:
        """Causal GQA attention of every query row over its sequence's cached keys."""
        c = self._config
        group = c.n_heads // c.n_kv_heads
        scale = np.float32(1.0 / np.sqrt(c.head_dim))
        out = np.empty_like(q)
        k_layer, v_layer = self.k_cache[layer_idx], self.v_cache[layer_idx]
        if plan.decode_rows.size:
            # [D, kvh, group, d] x [D, kvh, d, ctx] -> [D, kvh, group, ctx]
            qd = q if plan.all_decode else q[plan.decode_rows]
            qd = (qd * scale).reshape(-1, c.n_kv_heads, group, c.head_dim)
            kd = k_layer[plan.decode_slots].transpose(0, 2, 3, 1)
            vd = v_layer[plan.decode_slots].transpose(0, 2, 1, 3)
            scores = np.matmul(qd, kd)
            scores += plan.decode_bias
            probs = softmax_rows(scores)
            attn: F32 = np.matmul(probs, vd).reshape(-1, c.n_heads, c.head_dim)
            if plan.all_decode:
                return attn
            out[plan.decode_rows] = attn
        for start, end, slots, positions in plan.prefill:
            n = end - start
            qp = q[start:end].reshape(n, c.n_kv_heads, group, c.head_dim).transpose(1, 2, 0, 3)
            kp = k_layer[slots].transpose(1, 2, 0)  # [kvh, d, ctx]
            vp = v_layer[slots].transpose(1, 0, 2)  # [kvh, ctx, d]
            scores = np.matmul(qp, kp[:, None]) * scale  # [kvh, group, n, ctx]
            keys = np.arange(slots.shape[0])[None, :]
            hidden = keys > positions[:, None]  # [n, ctx]: the future
            if c.sliding_window is not None:
                hidden |= keys <= positions[:, None] - c.sliding_window
            scores[:, :, hidden] = -np.inf
            probs = softmax_rows(scores)
            attn = np.matmul(probs, vp[:, None])  # [kvh, group, n, d]
            out[start:end] = attn.transpose(2, 0, 1, 3).reshape(n, c.n_heads, c.head_dim)
        return out
