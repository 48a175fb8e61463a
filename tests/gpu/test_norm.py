"""ember.kernels.norm against ember.model.numpy_llama.rms_norm on random data."""

from __future__ import annotations

import numpy as np
import pytest

from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.norm import Norm
from ember.model.numpy_llama import rms_norm

pytestmark = pytest.mark.gpu

EPS = 1e-5
# Row lengths of the small and 8B models, one below a warp, and odd ones for the scalar path.
SHAPES = [(1, 576), (3, 4096), (5, 8192), (2, 1001), (4, 7), (1, 16384)]


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_numpy(norm: Norm, stream: Stream, shape: tuple[int, int]) -> None:
    x, w = _random(shape, 1), _random(shape[-1:], 2)
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.from_numpy(w) as dw,
        DeviceArray.empty(shape, np.float32) as out,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)
        norm.rms_norm(dx, dw, out, EPS, stream)
        stream.synchronize()
        got = out.to_numpy()
    np.testing.assert_allclose(got, rms_norm(x, w, EPS), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm_matches_numpy(norm: Norm, stream: Stream, shape: tuple[int, int]) -> None:
    x, residual, w = _random(shape, 3), _random(shape, 4), _random(shape[-1:], 5)
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.from_numpy(residual) as dr,
        DeviceArray.from_numpy(w) as dw,
        DeviceArray.empty(shape, np.float32) as out,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)
        norm.add_rms_norm(dx, dr, dw, out, EPS, stream)
        stream.synchronize()
        got, new_residual = out.to_numpy(), dr.to_numpy()
    h = x + residual
    np.testing.assert_array_equal(new_residual, h)  # one fp32 add: exact
    np.testing.assert_allclose(got, rms_norm(h, w, EPS), rtol=2e-5, atol=1e-6)


def test_rms_norm_on_unaligned_rows(norm: Norm, context: Context) -> None:
    # A view one element in breaks 16-byte alignment: the kernel must take its scalar path.
    x, w = _random((3 * 64 + 1,), 6), _random((64,), 7)
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.from_numpy(w) as dw,
        DeviceArray.empty((3 * 64,), np.float32) as out,
    ):
        view = dx.flat_slice(1, 3 * 64 + 1)
        rows = DeviceArray(view.buffer, (3, 64), view.dtype)
        norm.rms_norm(rows, dw, DeviceArray(out.buffer, (3, 64), out.dtype), EPS)
        got = out.to_numpy().reshape(3, 64)
    np.testing.assert_allclose(got, rms_norm(x[1:].reshape(3, 64), w, EPS), rtol=2e-5, atol=1e-6)


def test_norm_checks_dtypes_and_shapes(norm: Norm, context: Context) -> None:
    with (
        DeviceArray.empty((2, 8), np.float32) as f32,
        DeviceArray.empty((2, 8), np.float16) as f16,
        DeviceArray.empty((8,), np.float32) as w,
        DeviceArray.empty((4,), np.float32) as short_w,
    ):
        with pytest.raises(TypeError, match="float16"):
            norm.rms_norm(f16, w, f32, EPS)
        with pytest.raises(ValueError, match="weight"):
            norm.add_rms_norm(f32, f32, short_w, f32, EPS)


def test_gather_rms_norm_picks_and_normalises_rows(norm: Norm, stream: Stream) -> None:
    x, w = _random((6, 576), 7), _random((576,), 8)
    index = np.array([5, 0, 3, 3], np.int32)
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.from_numpy(index) as di,
        DeviceArray.from_numpy(w) as dw,
        DeviceArray.empty((4, 576), np.float32) as out,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)
        norm.gather_rms_norm_launch(dx, di, dw, out, EPS)(stream)
        stream.synchronize()
        got = out.to_numpy()
    np.testing.assert_allclose(got, rms_norm(x[index], w, EPS), rtol=2e-5, atol=1e-6)
