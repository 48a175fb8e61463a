"""The kernels of quant_formats.cuh's types (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) beyond what the
shared GEMV/GEMM tests check: a row's GEMV result is bit-identical whatever the batch and the
row's place in it (issue 21), the K-quant GEMV reads super-blocks at every start a row can
give them, and the embedding gather dequantises rows as NumPy does."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.gpu import DeviceArray, Stream
from ember.kernels.embedding import Embedding
from ember.kernels.quant_gemv import MAX_BATCH, QuantGemv, QuantType
from ember.model.quant import dequantize
from tests.gpu.quant_data import random_weight
from tests.gpu.test_quant_gemv import Reference, random_x, run_gemv

pytestmark = pytest.mark.gpu

FORMATS = [q for q in QuantType if q.unit_format]
K_QUANTS = [q for q in FORMATS if q.block_weights == 256]


def _gemv(
    gemv: QuantGemv, stream: Stream, dw: DeviceArray, quant: QuantType, x: np.ndarray, n: int
) -> np.ndarray:
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((x.shape[0], n), np.float32) as dy,
    ):
        dy.buffer.memset_d32(0xFFFFFFFF)
        gemv.gemv_launch(dw, quant, dx, dy)(stream)
        stream.synchronize()
        out: np.ndarray = dy.to_numpy()
    return out


@pytest.mark.parametrize("quant", FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(4096, 4096), (1003, 2304), (300, 14336)], ids=str)
def test_gemv_rows_are_batch_invariant(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, shape: tuple[int, int]
) -> None:
    """Row r alone and at every place of every batch size (every tier, full and partly used)
    gives the same bits."""
    n, k = shape
    raw = random_weight(quant, n, k, seed=k)
    rows = np.random.default_rng(n).standard_normal((MAX_BATCH, k)).astype(np.float32)
    with DeviceArray.from_numpy(raw) as dw:
        alone = np.concatenate(
            [_gemv(quant_gemv, stream, dw, quant, rows[i : i + 1], n) for i in range(MAX_BATCH)]
        )
        assert np.isfinite(alone).all()
        for batch in range(2, MAX_BATCH + 1):
            for start in (0, MAX_BATCH - batch):
                got = _gemv(quant_gemv, stream, dw, quant, rows[start : start + batch], n)
                assert np.array_equal(got, alone[start : start + batch]), (
                    f"{quant.name}: batch {batch} from row {start} differs from the rows alone "
                    f"in {np.count_nonzero(got != alone[start : start + batch])} values"
                )


@pytest.mark.parametrize("quant", K_QUANTS, ids=lambda q: q.name)
@pytest.mark.parametrize("k", [2304, 1280, 2048], ids=lambda k: f"K{k}")
def test_kquant_gemv_at_every_super_block_start(
    quant_gemv: QuantGemv, stream: Stream, quant: QuantType, k: int
) -> None:
    """Rows of an odd number of super-blocks (9, 5) put a warp's Q6_K super-blocks at all 8
    even starts within a 16-byte granule at once, each lane at its own (quant_gemv_super.cuh
    takes the start out in registers); 8 super-blocks (2048) give every lane of a stage the
    same start. Q4_K and Q5_K rows are whole granules whatever K. Every tier, against NumPy."""
    n = 97  # a thread block of 32 rows, two more, and one partly used
    raw = random_weight(quant, n, k, seed=k)
    ref = Reference(raw, quant, n, k)
    with DeviceArray.from_numpy(raw) as dw:
        for batch in (1, 2, 4, 8):
            x = random_x(batch, k, seed=batch)
            got, _ = run_gemv(quant_gemv, stream, dw, quant, x, n)
            ref.check(got, x, f"K {k}, batch {batch}")


@pytest.mark.parametrize("quant", FORMATS, ids=lambda q: q.name)
def test_embedding_rows_match_numpy(embedding: Embedding, stream: Stream, quant: QuantType) -> None:
    vocab, d = 37, 512
    raw = random_weight(quant, vocab, d, seed=3)
    gtype = GGMLQuantizationType[quant.name]
    table = dequantize(raw, gtype, (vocab, d))
    ids = np.array([0, 36, 5, -1, 17, 36], np.int32)
    with (
        DeviceArray.from_numpy(raw) as dt,
        DeviceArray.from_numpy(ids) as di,
        DeviceArray.empty((ids.shape[0], d), np.float32) as out,
    ):
        embedding.lookup(dt, gtype, di, out, stream)
        stream.synchronize()
        got = out.to_numpy()
    for row, token in enumerate(ids):
        expected = table[token] if token >= 0 else np.zeros(d, np.float32)
        # One fma where NumPy rounds a product and a sum: within an ulp of the weights' scale.
        np.testing.assert_allclose(got[row], expected, rtol=1e-6, atol=1e-6 * np.abs(table).max())
