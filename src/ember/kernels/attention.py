"""Launch wrapper for attention.cu: paged GQA attention over the fp16 KV cache."""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface

_INTERFACE: Final = family_interface("attention")
_F32: Final = np.dtype(np.float32)
_F16: Final = np.dtype(np.float16)
_I32: Final = np.dtype(np.int32)
_THREADS: Final = _INTERFACE.constant("threads")
# (head_dim, query heads per kv head) pairs attention.cu is instantiated for.
SHAPES: Final = tuple((hd, g) for hd, g in _INTERFACE.rows("shapes", 2))
# (head_dim, query heads per kv head, tokens a block) of its rows kernels (`rows_launch`).
ROWS_SHAPES: Final = tuple((hd, g, r) for hd, g, r in _INTERFACE.rows("rows_shapes", 3))
MAX_SPLITS: Final = 32


def partials_size(tokens: int, q_heads: int, head_dim: int, splits: int) -> int:
    """float32 elements of the split workspace for `tokens` query rows (0 when unsplit)."""
    return 0 if splits <= 1 else tokens * q_heads * splits * (head_dim + 2)


def counters_size(tokens: int, kv_heads: int) -> int:
    """int32 counters a split launch of `tokens` rows needs: zeroed once, left zero after."""
    return tokens * kv_heads


def choose_splits(tokens: int, kv_heads: int, multiprocessors: int, max_keys: int) -> int:
    """The most splits of a token's keys: about two blocks per SM, keeping >= 64 keys per
    split of a `max_keys` context. Each launch then uses only as many of them as a token's own
    keys need (attention.cu's SPLIT_KEYS per split), so short contexts pay for none."""
    blocks = max(1, tokens * kv_heads)
    wanted = math.ceil(2 * multiprocessors / blocks)
    by_keys = max(1, max_keys // 64)
    return max(1, min(wanted, by_keys, MAX_SPLITS))


class Attention:
    """The attention kernel family, loaded in the current context."""

    __slots__ = ("_attend", "_rows", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._attend: dict[tuple[int, int], Kernel] = {
            (hd, g): _INTERFACE.kernel(module, f"paged_attention_hd{hd}_g{g}") for hd, g in SHAPES
        }
        self._rows: dict[tuple[int, int, int], Kernel] = {
            (hd, g, r): _INTERFACE.kernel(module, f"paged_attention_rows_hd{hd}_g{g}_r{r}")
            for hd, g, r in ROWS_SHAPES
        }

    @classmethod
    def load(cls, device: Device) -> Attention:
        return cls(load_family("attention", device))

    @staticmethod
    def supports(head_dim: int, q_heads: int, kv_heads: int) -> bool:
        return q_heads % kv_heads == 0 and (head_dim, q_heads // kv_heads) in SHAPES

    @staticmethod
    def rows_per_block(head_dim: int, group: int) -> tuple[int, ...]:
        """The tokens a block of `rows_launch` may take for this shape, most first (none: no
        rows kernel)."""
        return tuple(sorted((r for hd, g, r in ROWS_SHAPES if (hd, g) == (head_dim, group)),
                            reverse=True))  # fmt: skip

    def attention_launch(
        self,
        qkv: DeviceArray,
        k_cache: DeviceArray,
        v_cache: DeviceArray,
        positions: DeviceArray,
        token_seq: DeviceArray,
        block_tables: DeviceArray,
        out: DeviceArray,
        block_size: int,
        splits: int = 1,
        partials: DeviceArray | None = None,
        counters: DeviceArray | None = None,
        window: int | None = None,
    ) -> Launch:
        """out [T, q_heads * head_dim] = causal attention of the q heads in qkv [T, (q_heads +
        2 kv_heads) * head_dim] over keys 0..positions[t] of sequence token_seq[t], whose slots
        are block_tables [S, max_blocks] (block ids) * block_size + offset in k_cache, v_cache
        [num_slots, kv_heads, head_dim]. With splits > 1, `partials` holds partials_size()
        float32 elements and `counters` counters_size() int32 ones, zero before the first
        launch; a token uses only the splits its own keys need. `window`: a token sees only
        its last `window` keys, itself included (a sliding window); None: all of them."""
        kv_heads, head_dim, q_heads = self._shape(
            qkv, k_cache, v_cache, positions, token_seq, block_tables, out, block_size
        )
        tokens = qkv.shape[0]
        if window is not None and window <= 0:
            raise ValueError(f"a sliding window must be positive, got {window}")
        if not 1 <= splits <= MAX_SPLITS:
            raise ValueError(f"splits must be 1..{MAX_SPLITS}, got {splits}")
        need = partials_size(tokens, q_heads, head_dim, splits)
        if need and (partials is None or partials.dtype != _F32 or partials.size < need):
            raise ValueError(f"{splits} splits need a float32 partials workspace of {need}")
        count = counters_size(tokens, kv_heads)
        if need and (counters is None or counters.dtype != _I32 or counters.size < count):
            raise ValueError(f"{splits} splits need {count} int32 counters")
        group = q_heads // kv_heads
        key = (head_dim, group)
        workspace = partials.ptr if need and partials is not None else 0
        counter_ptr = counters.ptr if need and counters is not None else 0
        scale_log2 = math.log2(math.e) / math.sqrt(head_dim)
        grid = (max(1, tokens), kv_heads, splits)
        return Launch(
            self._attend[key],
            grid,
            (_THREADS, 1, 1),
            (qkv.ptr, k_cache.ptr, v_cache.ptr, positions.ptr, token_seq.ptr)
            + (block_tables.ptr, block_tables.shape[1], out.ptr, workspace, counter_ptr)
            + (kv_heads,)
            + (block_size.bit_length() - 1, scale_log2, window or 0),
        )

    def rows_launch(
        self,
        qkv: DeviceArray,
        k_cache: DeviceArray,
        v_cache: DeviceArray,
        positions: DeviceArray,
        token_seq: DeviceArray,
        block_tables: DeviceArray,
        out: DeviceArray,
        block_size: int,
        rows: int | None = None,
    ) -> Launch:
        """`attention_launch`'s output, bit for bit, with one split and no window, from blocks
        of `rows` consecutive tokens (default: the most `rows_per_block` offers) that read each
        key and value once for the tokens of one sequence among them: a prefill chunk's."""
        kv_heads, head_dim, q_heads = self._shape(
            qkv, k_cache, v_cache, positions, token_seq, block_tables, out, block_size
        )
        group = q_heads // kv_heads
        offered = self.rows_per_block(head_dim, group)
        if not offered or (rows is not None and rows not in offered):
            raise ValueError(
                f"no rows kernel of {rows or 'any'} tokens for head_dim {head_dim} with {group} "
                f"q heads a kv head (have {ROWS_SHAPES})"
            )
        rows = rows or offered[0]
        tokens = qkv.shape[0]
        scale_log2 = math.log2(math.e) / math.sqrt(head_dim)
        return Launch(
            self._rows[(head_dim, group, rows)],
            (max(1, -(-tokens // rows)), kv_heads, 1),
            (_THREADS, 1, 1),
            (qkv.ptr, k_cache.ptr, v_cache.ptr, positions.ptr, token_seq.ptr)
            + (block_tables.ptr, block_tables.shape[1], out.ptr, tokens, kv_heads)
            + (block_size.bit_length() - 1, scale_log2),
        )

    def _shape(
        self,
        qkv: DeviceArray,
        k_cache: DeviceArray,
        v_cache: DeviceArray,
        positions: DeviceArray,
        token_seq: DeviceArray,
        block_tables: DeviceArray,
        out: DeviceArray,
        block_size: int,
    ) -> tuple[int, int, int]:
        """(kv_heads, head_dim, q_heads) of a launch's arrays, checked."""
        if qkv.dtype != _F32 or out.dtype != _F32:
            raise TypeError(f"attention needs float32 qkv and out, got {qkv.dtype}, {out.dtype}")
        if k_cache.dtype != _F16 or v_cache.dtype != _F16:
            raise TypeError("attention needs float16 caches")
        if any(a.dtype != _I32 for a in (positions, token_seq, block_tables)):
            raise TypeError("attention needs int32 positions, token_seq and block_tables")
        if len(k_cache.shape) != 3 or k_cache.shape != v_cache.shape:
            raise ValueError(f"caches must be [slots, kv_heads, head_dim], got {k_cache.shape}")
        _, kv_heads, head_dim = k_cache.shape
        tokens = qkv.shape[0]
        if len(out.shape) != 2 or out.shape[0] != tokens or out.shape[1] % head_dim:
            raise ValueError(f"out must be [{tokens}, q_heads * {head_dim}], got {out.shape}")
        q_heads = out.shape[1] // head_dim
        if not self.supports(head_dim, q_heads, kv_heads):
            raise ValueError(
                f"no attention kernel for head_dim {head_dim} with {q_heads} q heads over "
                f"{kv_heads} kv heads (have {SHAPES})"
            )
        if qkv.shape != (tokens, (q_heads + 2 * kv_heads) * head_dim):
            raise ValueError(f"qkv {qkv.shape} does not match out {out.shape}")
        if positions.shape != (tokens,) or token_seq.shape != (tokens,):
            raise ValueError(f"attention needs positions and token_seq [{tokens}]")
        if len(block_tables.shape) != 2:
            raise ValueError(f"block_tables must be [S, max_blocks], got {block_tables.shape}")
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        return kv_heads, head_dim, q_heads

    def unload(self) -> None:
        self.module.unload()
