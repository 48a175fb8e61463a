"""Rotary position embeddings as GGUF Llama weights expect them.

llama.cpp's converter permutes the rows of HF's q/k projections so that its "normal" RoPE,
which rotates adjacent pairs (x[2i], x[2i+1]), matches HF's rotate-half on the original
weights; on GGUF weights we therefore rotate adjacent pairs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ember.model.config import RopeConfig

F32 = npt.NDArray[np.float32]


class RotaryEmbedding:
    def __init__(self, rope: RopeConfig, max_positions: int) -> None:
        inv_freq = 1.0 / (rope.base ** (np.arange(0, rope.dim, 2, dtype=np.float64) / rope.dim))
        positions = np.arange(max_positions, dtype=np.float64) / rope.linear_factor
        angles = np.outer(positions, inv_freq)
        self._cos: F32 = np.cos(angles).astype(np.float32)  # [max_positions, dim / 2]
        self._sin: F32 = np.sin(angles).astype(np.float32)

    def cos_sin(self, positions: npt.NDArray[np.int32]) -> tuple[F32, F32]:
        """Tables for these positions, shaped [T, 1, dim / 2] to broadcast over heads."""
        return self._cos[positions][:, None, :], self._sin[positions][:, None, :]

    @staticmethod
    def apply(x: F32, cos: F32, sin: F32) -> F32:
        """Rotate [T, heads, dim] by the tables from `cos_sin`."""
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out
