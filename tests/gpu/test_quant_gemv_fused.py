"""quant_gemv's fusions against float64 NumPy: RMSNorm before the product; the residual add,
SwiGLU, and the q/k/v biases and RoPE (adjacent or NEOX pairs, any frequencies) with the
KV-cache store after it (what a decode step of up to 8 tokens runs).

Each is checked within the bound that the int8 quantisation of x allows (test_quant_gemv's
`Reference.check_quantised`), propagated through what follows the product.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ember.gpu import DeviceArray, Stream
from ember.kernels.quant_gemv import Output, QuantGemv, QuantType, RmsNorm
from ember.kernels.rope import RopeCache
from tests.gpu.quant_data import random_weight
from tests.gpu.test_quant_gemv import Reference, random_x

pytestmark = pytest.mark.gpu

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
EPS = 1e-5
BATCHES = (1, 3, 8)
# Float32 rounding of what follows the product (silu, rotation, the add), relative.
AFTER = 1e-6


def rms_norm(x: F32, g: F32) -> F32:
    """As rms_norm_f32: h * (1 / sqrt(mean(h^2) + eps)) * g, in float32."""
    scale = np.float32(1) / np.sqrt(np.mean(np.square(x), axis=1, keepdims=True) + np.float32(EPS))
    out: F32 = (x * scale.astype(np.float32)) * g
    return out


def residual_x(batch: int, k: int, seed: int) -> F32:
    """A residual stream: rows of different magnitudes (the norm must undo them)."""
    x = random_x(batch, k, seed)
    scaled: F32 = (x * np.geomspace(0.05, 40.0, batch, dtype=np.float32)[:, None]).astype(
        np.float32
    )
    return scaled


def norm_weight(k: int, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    g: F32 = (rng.uniform(0.3, 2.0, k) * rng.choice([-1.0, 1.0], k)).astype(np.float32)
    return g


def nan_filled(shape: tuple[int, ...], dtype: type) -> DeviceArray:
    array = DeviceArray.empty(shape, np.dtype(dtype))
    array.buffer.memset_d8(0xFF)  # all ones: NaN in float16 and float32
    return array


@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(576, 576), (1000, 4096)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_norm_then_product(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    n, k = shape
    raw = random_weight(quant, n, k, seed=n)
    ref = Reference(raw, quant, n, k)
    g = norm_weight(k, seed=k)
    with DeviceArray.from_numpy(raw) as dw, DeviceArray.from_numpy(g) as dg:
        for batch in BATCHES:
            x = residual_x(batch, k, seed=batch)
            with DeviceArray.from_numpy(x) as dx, nan_filled((batch, n), np.float32) as dy:
                quant_gemv.gemv_launch(dw, quant, dx, dy, norm=RmsNorm(dg, EPS))(stream)
                stream.synchronize()
                ref.check_quantised(dy.to_numpy(), rms_norm(x, g), f"batch {batch}")


@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_product_added_to_the_residual(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType
) -> None:
    n, k = 576, 1536
    raw = random_weight(quant, n, k, seed=5)
    ref = Reference(raw, quant, n, k)
    with DeviceArray.from_numpy(raw) as dw:
        for batch in BATCHES:
            x = random_x(batch, k, seed=batch)
            y0 = residual_x(batch, n, seed=batch + 10)
            with DeviceArray.from_numpy(x) as dx, DeviceArray.from_numpy(y0) as dy:
                quant_gemv.gemv_launch(dw, quant, dx, dy, output=Output.ADD)(stream)
                stream.synchronize()
                got = dy.to_numpy().astype(np.float64)
            slack = AFTER * (np.abs(got) + np.abs(y0))
            ref.check_quantised(got - y0, x, f"batch {batch}", slack)


@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(1536, 576), (1000, 640)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_norm_gate_up_swiglu(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    """W is [gate; up] (2F rows; F = 1000 leaves a thread block's 16 rows partly used)."""
    f, k = shape
    raw = random_weight(quant, 2 * f, k, seed=f)
    ref = Reference(raw, quant, 2 * f, k)
    g = norm_weight(k, seed=1)
    with DeviceArray.from_numpy(raw) as dw, DeviceArray.from_numpy(g) as dg:
        for batch in BATCHES:
            x = residual_x(batch, k, seed=batch)
            with DeviceArray.from_numpy(x) as dx, nan_filled((batch, f), np.float32) as dy:
                launch = quant_gemv.gemv_launch(
                    dw, quant, dx, dy, norm=RmsNorm(dg, EPS), output=Output.SWIGLU
                )
                launch(stream)
                stream.synchronize()
                got = dy.to_numpy().astype(np.float64)
            exact, bound = ref.bound(rms_norm(x, g))
            gate, up = exact[:, :f], exact[:, f:]
            bound_gate, bound_up = bound[:, :f], bound[:, f:]
            want = gate / (1 + np.exp(-gate)) * up
            # |silu'| <= 1.1 and |silu(g)| <= |g|.
            tolerance = (
                1.1 * bound_gate * (np.abs(up) + bound_up)
                + (np.abs(gate) + bound_gate) * bound_up
                + AFTER * np.abs(want)
            )
            excess = np.abs(got - want) / tolerance
            assert np.all(excess <= 1), f"batch {batch}: {excess.max():.3g}x the bound"


def partners(n: int, dim: int, neox: bool) -> npt.NDArray[np.int64]:
    """For each of n rows of whole heads, the row its RoPE pair shares: e ^ 1 (adjacent) or
    e +- dim / 2 (NEOX) within the head."""
    row = np.arange(n)
    e = row % dim
    other = (e + dim // 2) % dim if neox else e ^ 1
    partner: npt.NDArray[np.int64] = row - e + other
    return partner


def rotate(
    values: F64, positions: npt.NDArray[np.int32], heads: int, inv_freq: F64, neox: bool
) -> F64:
    """RoPE in float64 on values [batch, heads * dim]: pairs (2i, 2i + 1), or (i, i + dim / 2)
    with `neox`; pair i turns by position * inv_freq[i]."""
    dim = 2 * inv_freq.shape[0]
    v = values.reshape(len(positions), heads, dim)
    if neox:
        first, second = v[..., : dim // 2], v[..., dim // 2 :]
    else:
        first, second = v[..., 0::2], v[..., 1::2]
    angle = positions[:, None].astype(np.float64) * inv_freq[None, :]
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = np.empty_like(v)
    r0, r1 = first * c - second * s, first * s + second * c
    if neox:
        out[..., : dim // 2], out[..., dim // 2 :] = r0, r1
    else:
        out[..., 0::2], out[..., 1::2] = r0, r1
    return out.reshape(values.shape)


# (name, NEOX pairs, q/k/v biases, Llama 3 style frequency factors)
ROPE_LAYOUTS = [
    ("llama", False, False, False),
    ("llama3-factors", False, False, True),
    ("qwen2-neox-bias", True, True, False),
]


@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
@pytest.mark.parametrize(
    "heads", [(9, 3, 64, 576), (32, 8, 128, 4096)], ids=["smollm2", "llama-8b"]
)
@pytest.mark.parametrize("layout", ROPE_LAYOUTS, ids=lambda x: x[0])
def test_norm_qkv_rope_and_cache_store(
    quant_gemv: QuantGemv,
    stream: Stream,
    quant: QuantType,
    heads: tuple[int, int, int, int],
    layout: tuple[str, bool, bool, bool],
) -> None:
    _, neox, with_bias, with_factors = layout
    q_heads, kv_heads, dim, k = heads
    q_rows, kv_rows = q_heads * dim, kv_heads * dim
    n = q_rows + 2 * kv_rows
    inv_freq = 100000.0 ** (-2.0 * np.arange(dim // 2) / dim)
    if with_factors:
        inv_freq /= np.random.default_rng(5).uniform(1.0, 8.0, dim // 2)
    bias = (np.random.default_rng(6).standard_normal(n) * 0.5).astype(np.float32)
    if not with_bias:
        bias[:] = 0
    raw = random_weight(quant, n, k, seed=q_heads)
    ref = Reference(raw, quant, n, k)
    g = norm_weight(k, seed=2)
    num_slots = 64
    for batch in BATCHES:
        rng = np.random.default_rng(batch)
        x = residual_x(batch, k, seed=batch)
        positions = rng.integers(0, 8000, batch).astype(np.int32)
        slots = rng.choice(num_slots, batch, replace=False).astype(np.int32)
        slots[-1] = -1  # a padded row: stores nothing
        with (
            DeviceArray.from_numpy(raw) as dw,
            DeviceArray.from_numpy(g) as dg,
            DeviceArray.from_numpy(x) as dx,
            DeviceArray.from_numpy(positions) as dpos,
            DeviceArray.from_numpy(slots) as dslots,
            DeviceArray.from_numpy(inv_freq) as dfreq,
            DeviceArray.from_numpy(bias) as dbias,
            nan_filled((batch, n), np.float32) as dy,
            nan_filled((num_slots, kv_heads, dim), np.float16) as k_cache,
            nan_filled((num_slots, kv_heads, dim), np.float16) as v_cache,
        ):
            rope = RopeCache(
                dpos, dslots, k_cache, v_cache, q_heads, dfreq, neox, dbias if with_bias else None
            )
            launch = quant_gemv.gemv_launch(
                dw, quant, dx, dy, norm=RmsNorm(dg, EPS), output=Output.ROPE, rope=rope
            )
            launch(stream)
            stream.synchronize()
            got = dy.to_numpy().astype(np.float64)
            k_got = k_cache.to_numpy().astype(np.float64)
            v_got = v_cache.to_numpy().astype(np.float64)
        exact, bound = ref.bound(rms_norm(x, g))
        exact = exact + bias
        want = exact.copy()
        want[:, :q_rows] = rotate(exact[:, :q_rows], positions, q_heads, inv_freq, neox)
        want[:, q_rows : q_rows + kv_rows] = rotate(
            exact[:, q_rows : q_rows + kv_rows], positions, kv_heads, inv_freq, neox
        )
        # A rotated value mixes its pair's two errors (and float32 cos, sin).
        partner = partners(n, dim, neox)
        pair_bound = bound + bound[:, partner]
        pair_size = np.abs(exact) + np.abs(exact[:, partner])
        rotated = np.arange(n) < q_rows + kv_rows
        tolerance = np.where(rotated, pair_bound + AFTER * pair_size, bound) + AFTER * np.abs(want)
        excess = np.abs(got - want) / tolerance
        assert np.all(excess <= 1), f"batch {batch}: qkv {excess.max():.3g}x the bound"
        for t in range(batch):
            if slots[t] < 0:
                continue
            for cache, start in ((k_got, q_rows), (v_got, q_rows + kv_rows)):
                stored = cache[slots[t]].reshape(-1)
                want_t = want[t, start : start + kv_rows]
                limit = 1.001 * tolerance[t, start : start + kv_rows] + np.abs(want_t) * 2.0**-11
                assert np.all(np.abs(stored - want_t) <= limit), f"batch {batch}, token {t}"
        written = set(slots[slots >= 0].tolist())
        untouched = [s for s in range(num_slots) if s not in written]
        assert np.isnan(k_got[untouched]).all() and np.isnan(v_got[untouched]).all()


@pytest.mark.parametrize("quant", [QuantType.Q4_0, QuantType.Q8_0], ids=lambda q: q.name)
def test_norm_from_the_producers_sums_of_squares(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType
) -> None:
    """An ADD GEMV writes the sums of squares of y's 32-column groups; a norm GEMV that reads
    them computes what one summing the squares of its x itself does."""
    d, ffn, n = 4096, 1024, 512  # residual width, the ADD GEMV's K, the norm GEMV's N
    producer = random_weight(quant, d, ffn, seed=1)
    consumer = random_weight(quant, n, d, seed=2)
    ref = Reference(consumer, quant, n, d)
    g = norm_weight(d, seed=3)
    for batch in BATCHES:
        x = random_x(batch, ffn, seed=batch)
        residual = residual_x(batch, d, seed=batch + 1)
        with (
            DeviceArray.from_numpy(producer) as dp,
            DeviceArray.from_numpy(consumer) as dc,
            DeviceArray.from_numpy(g) as dg,
            DeviceArray.from_numpy(x) as dx,
            DeviceArray.from_numpy(residual) as dr,
            nan_filled((8, d // 32), np.float32) as sums,
            nan_filled((batch, n), np.float32) as from_sums,
            nan_filled((batch, n), np.float32) as from_x,
        ):
            add = quant_gemv.gemv_launch(dp, quant, dx, dr, output=Output.ADD, sums_of_squares=sums)
            add(stream)
            quant_gemv.gemv_launch(dc, quant, dr, from_sums, norm=RmsNorm(dg, EPS, sums))(stream)
            quant_gemv.gemv_launch(dc, quant, dr, from_x, norm=RmsNorm(dg, EPS))(stream)
            stream.synchronize()
            h = dr.to_numpy()
            got_sums = sums.to_numpy()[:batch].astype(np.float64)
            a, b = from_sums.to_numpy(), from_x.to_numpy()
        want = np.square(h.astype(np.float64)).reshape(batch, d // 32, 32).sum(axis=2)
        np.testing.assert_allclose(got_sums, want, rtol=1e-5)
        ref.check_quantised(a, rms_norm(h, g), f"batch {batch}, from sums")
        ref.check_quantised(b, rms_norm(h, g), f"batch {batch}, from x")


def test_fusion_arguments_are_checked(quant_gemv: QuantGemv, stream: Stream) -> None:
    quant = QuantType.Q8_0
    with (
        DeviceArray.empty((64, quant.row_bytes(64)), np.uint8) as w,
        DeviceArray.empty((1, 64), np.float32) as x,
        DeviceArray.empty((1, 64), np.float32) as y,
        DeviceArray.empty((1, 32), np.float32) as half_y,
        DeviceArray.empty((32,), np.float32) as short_norm,
        DeviceArray.empty((1,), np.int32) as positions,
        DeviceArray.empty((4, 1, 32), np.float16) as cache,
        DeviceArray.empty((16,), np.float64) as inv_freq,
    ):
        with pytest.raises(ValueError, match="norm"):
            quant_gemv.gemv_launch(w, quant, x, y, norm=RmsNorm(short_norm, EPS))
        with pytest.raises(ValueError, match="do not fit"):
            quant_gemv.gemv_launch(w, quant, x, y, output=Output.SWIGLU)
        quant_gemv.gemv_launch(w, quant, x, half_y, output=Output.SWIGLU)
        with pytest.raises(ValueError, match="sums of squares"):
            quant_gemv.gemv_launch(w, quant, x, y, sums_of_squares=half_y)
        with pytest.raises(ValueError, match="cannot write sums"):
            quant_gemv.gemv_launch(w, quant, x, half_y, output=Output.SWIGLU, sums_of_squares=y)
        with pytest.raises(ValueError, match="exactly when"):
            quant_gemv.gemv_launch(w, quant, x, y, output=Output.ROPE)
        rope = RopeCache(positions, positions, cache, cache, n_q_heads=1, inv_freq=inv_freq)
        with pytest.raises(ValueError, match="q and 2 x 1 kv heads"):
            quant_gemv.gemv_launch(w, quant, x, y, output=Output.ROPE, rope=rope)
