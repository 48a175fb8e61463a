"""Rotary position embeddings as GGUF weights expect them.

llama.cpp's converter permutes the rows of HF's Llama q/k projections so that its "normal"
RoPE, which rotates adjacent pairs (x[2i], x[2i+1]), matches HF's rotate-half on the original
weights: on `llama` files we rotate adjacent pairs. Qwen2/Qwen3 weights are stored as HF has
them and rotate halves (x[i], x[i + dim/2]), llama.cpp's NEOX RoPE (`RopeConfig.style`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ember.model.config import RopeConfig

F32 = npt.NDArray[np.float32]


def inverse_frequencies(rope: RopeConfig) -> npt.NDArray[np.float64]:
    """The dim / 2 rotation speeds (radians per position), Llama 3's factors applied."""
    inv_freq = 1.0 / (rope.base ** (np.arange(0, rope.dim, 2, dtype=np.float64) / rope.dim))
    if rope.freq_factors is not None:
        inv_freq /= np.asarray(rope.freq_factors, np.float64)
    return inv_freq


def radians_per_position(rope: RopeConfig) -> npt.NDArray[np.float64]:
    """What pair i turns by per position, linear scaling included: the table the CUDA kernels
    read (rope.cu), float64 so that angles at large positions keep float32 precision."""
    speeds: npt.NDArray[np.float64] = inverse_frequencies(rope) / rope.linear_factor
    return speeds


class RotaryEmbedding:
    def __init__(self, rope: RopeConfig, max_positions: int) -> None:
        positions = np.arange(max_positions, dtype=np.float64) / rope.linear_factor
        angles = np.outer(positions, inverse_frequencies(rope))
        self._cos: F32 = np.cos(angles).astype(np.float32)  # [max_positions, dim / 2]
        self._sin: F32 = np.sin(angles).astype(np.float32)
        self.style = rope.style

    def cos_sin(self, positions: npt.NDArray[np.int32]) -> tuple[F32, F32]:
        """Tables for these positions, shaped [T, 1, dim / 2] to broadcast over heads."""
        return self._cos[positions][:, None, :], self._sin[positions][:, None, :]

    def rotate(self, x: F32, cos: F32, sin: F32) -> F32:
        """Rotate [T, heads, dim] by the tables from `cos_sin`, in this model's layout."""
        if self.style == "halves":
            return self.apply_halves(x, cos, sin)
        return self.apply(x, cos, sin)

    @staticmethod
    def apply(x: F32, cos: F32, sin: F32) -> F32:
        """Rotate adjacent pairs of [T, heads, dim] by the tables from `cos_sin`."""
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    @staticmethod
    def apply_halves(x: F32, cos: F32, sin: F32) -> F32:
        """Rotate (x[i], x[i + dim/2]) pairs of [T, heads, dim] (NEOX / HF rotate-half)."""
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]
        out = np.empty_like(x)
        out[..., :half] = first * cos - second * sin
        out[..., half:] = second * cos + first * sin
        return out
