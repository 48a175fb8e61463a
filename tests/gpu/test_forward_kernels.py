"""The forward pass's small kernels (embedding, rope + cache store, silu_mul, gather) vs NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.gpu import DeviceArray, Stream
from ember.kernels.elementwise import Elementwise
from ember.kernels.embedding import Embedding
from ember.kernels.quant_gemv import QuantType
from ember.kernels.rope import Rope, RopeCache
from ember.model.config import RopeConfig, RopeStyle
from ember.model.numpy_llama import rms_norm
from ember.model.quant import dequantize
from ember.model.rope import RotaryEmbedding, radians_per_position
from tests.gpu.quant_data import random_weight

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "F16", "F32"])
def test_embedding_rows_match_dequantized_table(
    embedding: Embedding, stream: Stream, kind: str
) -> None:
    vocab, d = 300, 576
    rng = np.random.default_rng(3)
    gtype = GGMLQuantizationType[kind]
    if kind in ("F16", "F32"):
        raw = rng.standard_normal((vocab, d)).astype(np.float16 if kind == "F16" else np.float32)
        table = raw.astype(np.float32)
    else:
        raw = random_weight(QuantType[kind], vocab, d, seed=5)
        table = dequantize(raw, gtype, (vocab, d))
    # -1 and 300 are padding (zeros); -2 - r is row r of the previous step's sampled ids.
    ids = np.array([0, 299, 17, 17, -1, 300, 5, -2, -4, -3], np.int32)
    previous = np.array([11, 250, 3], np.int32)
    resolved = np.where(ids <= -2, previous[np.maximum(-2 - ids, 0)], ids)
    with (
        DeviceArray.from_numpy(raw) as dt,
        DeviceArray.from_numpy(ids) as di,
        DeviceArray.from_numpy(previous) as dp,
        DeviceArray.empty((len(ids), d), np.float32) as out,
    ):
        embedding.lookup(dt, gtype, di, out, stream, previous=dp)
        stream.synchronize()
        got = out.to_numpy()
    valid = (resolved >= 0) & (resolved < vocab)
    assert valid.sum() == 8
    np.testing.assert_array_equal(got[valid], table[resolved[valid]])
    assert not got[~valid].any()


# (name, head_dim, RoPE layout, q/k/v biases, q/k norms, Llama 3 frequency factors)
PROLOGUES = [
    ("llama", 64, "adjacent", False, False, False),
    ("llama3", 128, "adjacent", False, False, True),
    ("qwen2", 64, "halves", True, False, False),
    ("qwen3", 128, "halves", False, True, False),
    ("tiny-qwen3", 32, "halves", True, True, False),  # head_dim / 2 of 16: part of a warp
]


@pytest.mark.parametrize("prologue", PROLOGUES, ids=lambda p: p[0])
def test_rope_qkv_cache_matches_numpy(
    rope: Rope, stream: Stream, prologue: tuple[str, int, RopeStyle, bool, bool, bool]
) -> None:
    """The attention prologue as numpy_llama runs it: biases, q/k RMSNorm per head, RoPE, then
    k and v stored in fp16 at their slots (none for a negative slot)."""
    _, hd, style, with_bias, with_norm, with_factors = prologue
    q_heads, kv_heads, tokens = 9, 3, 6
    width = (q_heads + 2 * kv_heads) * hd
    rng = np.random.default_rng(11)
    qkv = (rng.standard_normal((tokens, width)) * 3).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32)
    norms = rng.uniform(0.5, 1.5, (2, hd)).astype(np.float32)
    factors = tuple(float(f) for f in rng.uniform(1, 8, hd // 2).astype(np.float32))
    positions = np.array([0, 1, 2, 900, 4096, 5], np.int32)
    slots = np.array([3, 0, 7, 1, -1, 2], np.int32)  # -1: a padded row, stores nothing
    cache = np.full((8, kv_heads, hd), 1.5, np.float16)
    config = RopeConfig(1e6, hd, style=style, freq_factors=factors if with_factors else None)
    emb = RotaryEmbedding(config, 8192)
    cos, sin = emb.cos_sin(positions)
    eps = 1e-6
    h = qkv + bias if with_bias else qkv.copy()
    qk = h[:, : (q_heads + kv_heads) * hd].reshape(tokens, q_heads + kv_heads, hd)
    if with_norm:
        per_head = np.concatenate(
            [np.tile(norms[0], (q_heads, 1)), np.tile(norms[1], (kv_heads, 1))]
        )
        qk = rms_norm(qk, per_head, eps)
    qk = emb.rotate(qk, cos, sin)
    want_q, want_k = qk[:, :q_heads], qk[:, q_heads:]
    v = h[:, (q_heads + kv_heads) * hd :].reshape(tokens, kv_heads, hd)
    with (
        DeviceArray.from_numpy(qkv) as dqkv,
        DeviceArray.from_numpy(positions) as dpos,
        DeviceArray.from_numpy(slots) as dslots,
        DeviceArray.from_numpy(cache) as kc,
        DeviceArray.from_numpy(cache) as vc,
        DeviceArray.from_numpy(radians_per_position(config)) as dfreq,
        DeviceArray.from_numpy(bias) as dbias,
        DeviceArray.from_numpy(norms) as dnorms,
    ):
        args = RopeCache(
            dpos,
            dslots,
            kc,
            vc,
            q_heads,
            dfreq,
            neox=style == "halves",
            bias=dbias if with_bias else None,
            qk_norm=dnorms if with_norm else None,
            eps=eps,
        )
        rope.qkv_cache_launch(dqkv, args)(stream)
        stream.synchronize()
        got, got_k, got_v = dqkv.to_numpy(), kc.to_numpy(), vc.to_numpy()
    got_q = got[:, : q_heads * hd].reshape(tokens, q_heads, hd)
    np.testing.assert_allclose(got_q, want_q, rtol=1e-5, atol=1e-5)
    for t, slot in enumerate(slots):
        if slot < 0:
            continue
        np.testing.assert_allclose(got_k[slot], want_k[t].astype(np.float16), rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(got_v[slot], v[t].astype(np.float16))
    untouched = sorted(set(range(8)) - set(slots[slots >= 0].tolist()))
    assert (got_k[untouched] == 1.5).all() and (got_v[untouched] == 1.5).all()


def test_silu_mul_and_gather(elementwise: Elementwise, stream: Stream) -> None:
    rng = np.random.default_rng(2)
    rows, f = 5, 1536
    gate_up = (rng.standard_normal((rows, 2 * f)) * 4).astype(np.float32)
    gate, up = gate_up[:, :f].astype(np.float64), gate_up[:, f:]
    want = (gate / (1 + np.exp(-gate)) * up).astype(np.float32)
    index = np.array([4, 0, 4], np.int32)
    with (
        DeviceArray.from_numpy(gate_up) as dgu,
        DeviceArray.empty((rows, f), np.float32) as act,
        DeviceArray.from_numpy(index) as di,
        DeviceArray.empty((3, f), np.float32) as picked,
    ):
        elementwise.silu_mul_launch(dgu, act)(stream)
        elementwise.gather_rows_launch(act, di, picked)(stream)
        stream.synchronize()
        got, got_rows = act.to_numpy(), picked.to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_rows, got[index])
