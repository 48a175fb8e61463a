"""ember.kernels.quant_gemv against ember.model.quant.dequantize(raw) @ x on random blocks."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.gpu import Context, DeviceArray, Stream
from ember.kernels.quant_gemv import QuantGemv, QuantType
from ember.model.quant import dequantize
from tests.gpu.quant_data import random_weight

pytestmark = pytest.mark.gpu

# (N, K): the small model's projections, its tied output head, Llama 8B's, and ragged ones
# (N not a multiple of a block's 8 rows, K not a multiple of a 32-block chunk).
SHAPES = [
    (1536, 576),
    (576, 1536),
    (49152, 576),
    (4096, 4096),
    (14336, 4096),
    (4096, 14336),
    (1003, 96),
    (37, 1056),
]
BATCHES = (1, 3, 8)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("quant", list(QuantType), ids=lambda q: q.name)
def test_gemv_matches_dequantized_matmul(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    n, k = shape
    raw = random_weight(quant, n, k, seed=n + k)
    weight = dequantize(raw, GGMLQuantizationType[quant.name], (n, k))
    x = np.random.default_rng(k).standard_normal((max(BATCHES), k)).astype(np.float32)
    want = x @ weight.T
    # Both sides sum k float32 products: bound the error by the sum of their magnitudes.
    scale = np.abs(x) @ np.abs(weight, out=weight).T
    with DeviceArray.from_numpy(raw) as dw:
        for batch in BATCHES:
            with (
                DeviceArray.from_numpy(x[:batch]) as dx,
                DeviceArray.empty((batch, n), np.float32) as dy,
            ):
                dy.buffer.memset_d32(0xFFFFFFFF)  # NaN: any output left unwritten fails
                quant_gemv.gemv(dw, quant, dx, dy, stream)
                stream.synchronize()
                got = dy.to_numpy()
            error = np.abs(got - want[:batch]) / (scale[:batch] + 1e-6)
            assert np.all(error <= 5e-5), f"batch {batch}: worst relative error {error.max():.3g}"


def test_gemv_checks_arguments(quant_gemv: QuantGemv, context: Context) -> None:
    row_bytes = QuantType.Q8_0.row_bytes(64)
    with (
        DeviceArray.empty((8, row_bytes), np.uint8) as w,
        DeviceArray.empty((8 * row_bytes + 16,), np.uint8) as spare,
        DeviceArray.empty((1, 64), np.float32) as x,
        DeviceArray.empty((9, 64), np.float32) as x9,
        DeviceArray.empty((1, 8), np.float32) as y,
        DeviceArray.empty((1, 64), np.float16) as x16,
    ):
        with pytest.raises(TypeError, match="float16"):
            quant_gemv.gemv(w, QuantType.Q8_0, x16, y)
        with pytest.raises(ValueError, match="do not fit"):
            quant_gemv.gemv(w, QuantType.Q4_0, x, y)
        with pytest.raises(ValueError, match="batch of 1 to 8"):
            quant_gemv.gemv(w, QuantType.Q8_0, x9, y)
        unaligned = spare.flat_slice(2, 2 + 8 * row_bytes)
        view = DeviceArray(unaligned.buffer, (8, row_bytes), w.dtype)
        with pytest.raises(ValueError, match="aligned"):
            quant_gemv.gemv(view, QuantType.Q8_0, x, y)
