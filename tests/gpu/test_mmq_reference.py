"""The MMQ reference itself (tests/gpu/mmq_reference.py), on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.kernels.quant_gemv import QuantType
from ember.kernels.quant_mmq import MMQ_TYPES
from ember.model.quant import dequantize
from tests.gpu.mmq_reference import MmqReference, quantize_x
from tests.gpu.quant_data import random_weight


def test_quantize_x_rounds_to_nearest_even_within_half_a_step() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 256)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
    x[1, 32:64] = 0.0  # a unit of zeros
    x[2, 64] = 127.0  # a unit whose max quantises to 127 exactly: 63.5 lands on a tie
    x[2, 65] = 63.5
    x[2, 66] = 62.5
    q = quantize_x(x)
    assert (q.codes[1, 32:64] == 0).all() and q.scales[1, 1] == 0
    assert q.codes[2, 64] == 127 and q.codes[2, 65] == 64 and q.codes[2, 66] == 62
    amax = np.abs(x.reshape(5, 8, 32)).max(axis=2)
    assert (np.abs(q.codes.reshape(5, 8, 32)).max(axis=2)[amax > 0] == 127).all()
    error = np.abs(q.seen - x).reshape(5, 8, 32).max(axis=2)
    assert (error <= amax / 254 * 1.0002 + 1e-30).all()
    np.testing.assert_allclose(q.sums, x.reshape(5, 8, 32).sum(axis=2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quant", MMQ_TYPES, ids=lambda q: q.name)
def test_reference_is_the_product_within_x_quantisation(quant: QuantType) -> None:
    """Against x @ W.T in float64: off by at most the quantisation error of x times |W|, and
    near it (a wrong unit's scale or minimum would be off by far more)."""
    n, k, m = 40, 512, 6
    raw = random_weight(quant, n, k, seed=9)
    x = np.random.default_rng(2).standard_normal((m, k)).astype(np.float32)
    weight = dequantize(raw, GGMLQuantizationType[quant.name], (n, k)).astype(np.float64)
    exact = x.astype(np.float64) @ weight.T
    reference = MmqReference.of(raw, quant, x)
    seen = quantize_x(x).seen
    bound = np.abs(seen - x) @ np.abs(weight).T
    assert (np.abs(reference.want - exact) <= bound * 1.001 + 1e-12).all()
    assert np.abs(reference.want - exact).max() < 0.02 * np.abs(exact).max()
