"""The forward pass's intermediate tensors: one device allocation, carved per bucket size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.memory import DeviceBuffer
from ember.model.config import ModelConfig

_ALIGN: Final = 256
_F32: Final = np.dtype(np.float32)
_GEMV_ROWS: Final = 8  # quant_gemv's largest batch: the steps whose GEMVs fuse the norm


@dataclass(frozen=True, slots=True)
class ActivationViews:
    """Views for a step of T token rows and L logits rows (prefixes of the max-size buffers)."""

    residual: DeviceArray  # [T, d] the residual stream
    x: DeviceArray  # [T, d] normed input of the next projection
    qkv: DeviceArray  # [T, q + 2 kv]
    attn: DeviceArray  # [T, q]
    delta: DeviceArray  # [T, d] a projection's output, added to the residual by the next norm
    gate_up: DeviceArray  # [T, 2 ffn]
    act: DeviceArray  # [T, ffn]
    last: DeviceArray  # [L, d] normed rows whose logits are wanted
    logits: DeviceArray  # [L, vocab]
    sampled: DeviceArray  # int32 [L]
    partials: DeviceArray  # float32 attention split workspace
    counters: DeviceArray  # int32 attention split counters, zero between launches
    # float32 [8, d / 32]: sums of squares of the residual's 32-column groups, from the fused
    # decode GEMV that last added into it, for the next GEMV's norm (quant_gemv's RmsNorm)
    norm_partials: DeviceArray


class Activations:
    def __init__(self, config: ModelConfig, max_tokens: int, max_rows: int, partials: int) -> None:
        c = config
        self.config = c
        self._widths = {
            "residual": c.d_model,
            "x": c.d_model,
            "qkv": c.q_dim + 2 * c.kv_dim,
            "attn": c.q_dim,
            "delta": c.d_model,
            "gate_up": 2 * c.ffn_dim,
            "act": c.ffn_dim,
        }
        self._offsets: dict[str, int] = {}
        offset = 0

        def place(name: str, nbytes: int) -> None:
            nonlocal offset
            self._offsets[name] = offset
            offset += -(-max(nbytes, 4) // _ALIGN) * _ALIGN

        for name, width in self._widths.items():
            place(name, 4 * max_tokens * width)
        place("last", 4 * max_rows * c.d_model)
        place("logits", 4 * max_rows * c.vocab_size)
        place("sampled", 4 * max_rows)
        place("partials", 4 * partials)
        place("counters", 4 * max_tokens * c.n_kv_heads)
        self._groups = -(-c.d_model // 32)
        place("norm_partials", 4 * _GEMV_ROWS * self._groups)
        self.partials_size = partials
        self.max_rows = max_rows
        self.buffer = DeviceBuffer.alloc(offset)
        # Attention's split counters start at zero once; each launch leaves them zero.
        counters = 4 * max_tokens * c.n_kv_heads
        self.buffer.view(self._offsets["counters"], counters).memset_d32(0)

    def views(self, tokens: int, rows: int) -> ActivationViews:
        def view(
            name: str, shape: tuple[int, ...], dtype: np.dtype[np.generic] = _F32
        ) -> DeviceArray:
            nbytes = max(int(np.prod(shape)), 1) * dtype.itemsize
            return DeviceArray(self.buffer.view(self._offsets[name], nbytes), shape, dtype)

        rows_views = {name: view(name, (tokens, w)) for name, w in self._widths.items()}
        return ActivationViews(
            **rows_views,
            last=view("last", (rows, self.config.d_model)),
            logits=view("logits", (rows, self.config.vocab_size)),
            sampled=view("sampled", (rows,), np.dtype(np.int32)),
            partials=view("partials", (max(self.partials_size, 1),)),
            counters=view("counters", (tokens * self.config.n_kv_heads,), np.dtype(np.int32)),
            norm_partials=view("norm_partials", (_GEMV_ROWS, self._groups)),
        )

    def sampled_ids(self) -> DeviceArray:
        """int32 [max rows]: every bucket's `sampled` is a prefix of this (so a step can read
        the previous step's ids whatever their bucket)."""
        return DeviceArray(
            self.buffer.view(self._offsets["sampled"], 4 * self.max_rows),
            (self.max_rows,),
            np.dtype(np.int32),
        )

    def free(self) -> None:
        self.buffer.free()
