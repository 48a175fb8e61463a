"""What every block decoder shares: its array types and the chunked loop that drives it.

A decoder takes a tensor's data as rows of whole blocks, (n_blocks, bytes per block), and
returns (n_blocks, weights per block) float32. It works through the rows a chunk at a time,
writing into one preallocated output: the decoders make several passes over their output, and
chunks of ~512 KiB of float32 keep those passes in cache (whole-tensor passes measured 1.2-1.4x
slower for the 32-weight types).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Bytes = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

CHUNK_WEIGHTS = 1 << 17  # 512 KiB of float32 output per chunk


def decode_in_chunks(
    blocks: Bytes, block_weights: int, decode_chunk: Callable[[Bytes, Floats], None]
) -> Floats:
    """Run `decode_chunk(chunk_of_blocks, its_output_rows)` over `blocks`; the whole output."""
    out = np.empty((blocks.shape[0], block_weights), dtype=np.float32)
    step = max(1, CHUNK_WEIGHTS // block_weights)
    for start in range(0, blocks.shape[0], step):
        decode_chunk(blocks[start : start + step], out[start : start + step])
    return out


def f16_column(chunk: Bytes, at: int) -> Floats:
    """The little-endian f16 at byte `at` of every block, as a float32 column (n_blocks, 1)."""
    return chunk[:, at : at + 2].view("<f2").astype(np.float32)


def split_nibbles(packed: Bytes, groups: int) -> Bytes:
    """(n, groups, 2, bytes per group) uint8: each group's low nibbles, then its high nibbles.

    `packed` is (n, groups * bytes per group); in every GGML 4-bit layout a group of bytes
    holds one run of weights in its low nibbles and the next run in its high nibbles.
    """
    n = packed.shape[0]
    grouped = packed.reshape(n, groups, 1, -1)
    out = np.empty((n, groups, 2, grouped.shape[-1]), dtype=np.uint8)
    np.bitwise_and(grouped[:, :, 0], 0x0F, out=out[:, :, 0])
    np.right_shift(grouped[:, :, 0], 4, out=out[:, :, 1])
    return out


def unpack_bits(packed: Bytes, bits: int, planes: int) -> Bytes:
    """(n, planes, bytes) uint8: plane p holds each byte's field of `bits` bits at bit p * bits.

    `packed` is (n, bytes). GGML's 1- and 2-bit layouts store consecutive runs of weights in
    successive bit planes of one run of bytes.
    """
    shifts = np.arange(0, bits * planes, bits, dtype=np.uint8).reshape(1, planes, 1)
    fields: Bytes = (packed[:, None, :] >> shifts) & np.uint8((1 << bits) - 1)
    return fields
