"""ember.kernels.rope against ember.model.rope.RotaryEmbedding on random data: adjacent and
NEOX pairs, linear scaling and Llama 3's frequency factors, partial rotation."""

from __future__ import annotations

import numpy as np
import pytest

from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.rope import Rope
from ember.model.config import RopeConfig, RopeStyle
from ember.model.rope import RotaryEmbedding, radians_per_position

pytestmark = pytest.mark.gpu

MAX_POSITION = 16384


@pytest.mark.parametrize(
    ("tokens", "q_heads", "kv_heads", "head_dim", "rot_dim", "base", "linear_factor", "style"),
    [
        (7, 9, 3, 64, 64, 10000.0, 1.0, "adjacent"),  # SmolLM-like heads
        (33, 32, 8, 128, 128, 500000.0, 1.0, "adjacent"),  # Llama 3 8B
        (5, 4, 4, 128, 128, 10000.0, 4.0, "adjacent"),  # linear scaling
        (6, 3, 1, 64, 32, 10000.0, 1.0, "adjacent"),  # partial rotation: the tail stays
        (1, 1, 1, 2, 2, 10000.0, 1.0, "adjacent"),
        (9, 32, 8, 128, 128, 1000000.0, 1.0, "halves"),  # Qwen3 8B
        (4, 14, 2, 64, 64, 1000000.0, 2.0, "halves"),  # Qwen2.5 0.5B, scaled
        (6, 3, 1, 64, 32, 10000.0, 1.0, "halves"),  # partial NEOX: pairs (i, i + 16)
    ],
)
@pytest.mark.parametrize("factors", [False, True], ids=["plain", "freq-factors"])
def test_rope_matches_numpy(
    rope: Rope,
    stream: Stream,
    tokens: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    rot_dim: int,
    base: float,
    linear_factor: float,
    style: RopeStyle,
    factors: bool,
) -> None:
    rng = np.random.default_rng(tokens * 131 + head_dim)
    q = rng.standard_normal((tokens, q_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((tokens, kv_heads, head_dim)).astype(np.float32)
    positions = rng.integers(0, MAX_POSITION, tokens).astype(np.int32)
    freq_factors = (
        tuple(float(f) for f in rng.uniform(1.0, 8.0, rot_dim // 2).astype(np.float32))
        if factors
        else None
    )
    config = RopeConfig(base, rot_dim, linear_factor, style, freq_factors)
    with (
        DeviceArray.from_numpy(q) as dq,
        DeviceArray.from_numpy(k) as dk,
        DeviceArray.from_numpy(positions) as dp,
        DeviceArray.from_numpy(radians_per_position(config)) as dfreq,
    ):
        rope.apply(dq, dk, dp, dfreq, style == "halves", stream)
        stream.synchronize()
        got_q, got_k = dq.to_numpy(), dk.to_numpy()
    table = RotaryEmbedding(config, MAX_POSITION)
    cos, sin = table.cos_sin(positions)
    for got, ref in ((got_q, q), (got_k, k)):
        want = ref.copy()
        want[..., :rot_dim] = table.rotate(ref[..., :rot_dim], cos, sin)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[..., rot_dim:], ref[..., rot_dim:])


def test_rope_checks_arguments(rope: Rope, context: Context) -> None:
    with (
        DeviceArray.empty((2, 4, 8), np.float32) as q,
        DeviceArray.empty((3, 4, 8), np.float32) as k_other_tokens,
        DeviceArray.empty((2,), np.int32) as positions,
        DeviceArray.empty((2,), np.int64) as positions64,
        DeviceArray.empty((4,), np.float64) as inv_freq,
        DeviceArray.empty((4,), np.float32) as inv_freq32,
        DeviceArray.empty((5,), np.float64) as too_many,
    ):
        with pytest.raises(TypeError, match="int64"):
            rope.apply(q, q, positions64, inv_freq)
        with pytest.raises(ValueError, match="T, heads"):
            rope.apply(q, k_other_tokens, positions, inv_freq)
        with pytest.raises(TypeError, match="float64 inv_freq"):
            rope.apply(q, q, positions, inv_freq32)
        with pytest.raises(ValueError, match="rot_dim 10 <= head_dim 8"):
            rope.apply(q, q, positions, too_many)
