"""Random quantised weights for the GPU kernel tests: raw GGUF block bytes, as a model file
holds them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ember.kernels.quant_gemv import QuantType


def random_weight(quant: QuantType, n: int, k: int, seed: int) -> npt.NDArray[np.uint8]:
    """Raw GGUF bytes [n, row bytes] of random blocks with scales like real weights'."""
    rng = np.random.default_rng(seed)
    blocks = n * k // 32
    parts = [rng.uniform(0.002, 0.02, (blocks, 1)).astype(np.float16).view(np.uint8)]
    if quant is QuantType.Q4_1:
        parts.append(rng.uniform(-0.15, 0.0, (blocks, 1)).astype(np.float16).view(np.uint8))
    quant_bytes = 32 if quant is QuantType.Q8_0 else 16
    parts.append(rng.integers(0, 256, (blocks, quant_bytes), dtype=np.uint8))
    return np.concatenate(parts, axis=1).reshape(n, quant.row_bytes(k))
