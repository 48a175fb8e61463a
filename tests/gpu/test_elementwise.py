"""ember.kernels.elementwise against NumPy on random data."""

from __future__ import annotations

import numpy as np
import pytest

from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.elementwise import Elementwise

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1023, 1024, 1025, (1 << 20) + 3])
def test_vector_add_matches_numpy(elementwise: Elementwise, stream: Stream, n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    with (
        DeviceArray.from_numpy(a) as da,
        DeviceArray.from_numpy(b) as db,
        DeviceArray.empty((n,), np.float32) as out,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)  # NaN: any element left unwritten fails the check
        elementwise.vector_add(da, db, out, stream)
        stream.synchronize()
        got = out.to_numpy()
    np.testing.assert_array_equal(got, a + b)  # one fp32 add: exact


def test_vector_add_on_unaligned_views(elementwise: Elementwise, context: Context) -> None:
    # Offsets of one element break 16-byte alignment: the kernel must take its scalar path.
    n = 4099
    rng = np.random.default_rng(7)
    a, b = (rng.standard_normal(n + 3).astype(np.float32) for _ in range(2))
    with (
        DeviceArray.from_numpy(a) as da,
        DeviceArray.from_numpy(b) as db,
        DeviceArray.empty((n + 3,), np.float32) as out,
    ):
        out.buffer.memset_d32(0xFFFFFFFF)
        elementwise.vector_add(
            da.flat_slice(1, n + 1), db.flat_slice(2, n + 2), out.flat_slice(3, n + 3)
        )
        got = out.to_numpy()
    np.testing.assert_array_equal(got[3:], a[1 : n + 1] + b[2 : n + 2])
    assert np.isnan(got[:3]).all()


def test_vector_add_checks_dtypes_and_shapes(elementwise: Elementwise, context: Context) -> None:
    with (
        DeviceArray.empty((8,), np.float32) as f32,
        DeviceArray.empty((8,), np.float16) as f16,
        DeviceArray.empty((4, 2), np.float32) as other_shape,
    ):
        with pytest.raises(TypeError, match="float16"):
            elementwise.vector_add(f32, f16, f32)
        with pytest.raises(ValueError, match="shape"):
            elementwise.vector_add(f32, f32, other_shape)
