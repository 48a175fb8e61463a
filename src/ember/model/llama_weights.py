"""Llama-family weights from a GGUF, dequantized to float32 NumPy arrays for the CPU backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ember.model.config import ModelConfig

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class LayerWeights:
    # Projections are stored transposed, [in, out], C-contiguous: OpenBLAS runs `x @ w` for
    # small batches ~1.5x faster than `x @ w.T` (measured on the 2-core CI machine kind).
    attn_norm: F32  # [d_model]
    wqkv: F32  # [d_model, q_dim + 2 * kv_dim]: q, k, v projections side by side (one GEMM)
    wo: F32  # [q_dim, d_model]
    ffn_norm: F32  # [d_model]
    w_gate_up: F32  # [d_model, 2 * ffn_dim]: gate and up side by side (one GEMM)
    w_down: F32  # [ffn_dim, d_model]


@dataclass(frozen=True, slots=True)
class LlamaWeights:
    token_embd: F32  # [vocab, d_model]
    layers: tuple[LayerWeights, ...]
    output_norm: F32  # [d_model]
    lm_head: F32  # [vocab, d_model] (GGUF layout); the embedding itself when tied

    @classmethod
    def load(
        cls,
        gguf: GGUFFile,
        config: ModelConfig,
        progress: Callable[[int], None] | None = None,
    ) -> LlamaWeights:
        """Dequantize every tensor; `progress(n)` is called after each layer with n done."""
        c = config
        embd = gguf.load("token_embd.weight", (c.vocab_size, c.d_model))
        layers = []
        for i in range(c.n_layers):
            p = f"blk.{i}."
            layers.append(
                LayerWeights(
                    attn_norm=gguf.load(p + "attn_norm.weight", (c.d_model,)),
                    wqkv=_stacked_transposed(
                        gguf.load(p + "attn_q.weight", (c.q_dim, c.d_model)),
                        gguf.load(p + "attn_k.weight", (c.kv_dim, c.d_model)),
                        gguf.load(p + "attn_v.weight", (c.kv_dim, c.d_model)),
                    ),
                    wo=_stacked_transposed(
                        gguf.load(p + "attn_output.weight", (c.d_model, c.q_dim))
                    ),
                    ffn_norm=gguf.load(p + "ffn_norm.weight", (c.d_model,)),
                    w_gate_up=_stacked_transposed(
                        gguf.load(p + "ffn_gate.weight", (c.ffn_dim, c.d_model)),
                        gguf.load(p + "ffn_up.weight", (c.ffn_dim, c.d_model)),
                    ),
                    w_down=_stacked_transposed(
                        gguf.load(p + "ffn_down.weight", (c.d_model, c.ffn_dim))
                    ),
                )
            )
            if progress is not None:
                progress(i + 1)
        lm_head = (
            embd if c.tied_embeddings else gguf.load("output.weight", (c.vocab_size, c.d_model))
        )
        return cls(
            token_embd=embd,
            layers=tuple(layers),
            output_norm=gguf.load("output_norm.weight", (c.d_model,)),
            lm_head=lm_head,
        )


def _stacked_transposed(*weights: F32) -> F32:
    """GGUF's [out, in] matrices stacked along `out`, returned as one C-contiguous [in, out]."""
    return np.ascontiguousarray(np.concatenate(weights).T)
