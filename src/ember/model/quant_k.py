"""Decoders for GGML's K-quants: 256-weight super-blocks of 16 or 32-weight sub-blocks.

Layouts (ggml-common.h `block_q*_K`; gguf-py `quants.py`), all little-endian, in byte order:

- Q2_K, 84 bytes: 16 scale bytes (low nibble scale, high nibble minimum, per 16 weights),
  64 bytes of 2-bit q, f16 `d`, f16 `dmin`;                 w = (d * sc) * q - (dmin * m)
- Q3_K, 110 bytes: 32 bytes of high bits, 64 bytes of 2-bit low q, 12 bytes of 6-bit scales
  (per 16 weights, stored + 32), f16 `d`;                    w = (d * (sc - 32)) * q
  where q = low - 4 when the high bit is clear, low when it is set
- Q4_K, 144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minimums (per 32
  weights), 128 bytes of nibbles;                           w = (d * sc) * q - (dmin * m)
- Q5_K, 176 bytes: as Q4_K with 32 bytes of fifth bits before the nibbles
- Q6_K, 210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales
  (per 16 weights), f16 `d`;                                 w = (d * sc) * (q - 32)

Where the bits of weight i sit:
- 2-bit planes (Q2_K, Q3_K low, Q6_K high): each half of 128 weights reads 32 bytes; weights
  32 p .. 32 p + 31 of the half are bit plane p (bits 2p, 2p + 1) of those bytes.
- nibbles (Q4_K, Q5_K): each 64 weights read 32 bytes, low nibbles then high nibbles; in Q6_K
  each half's 128 weights read 64 bytes: low nibbles of all 64, then high nibbles.
- single bits (Q3_K high, Q5_K fifth): weights 32 p .. 32 p + 31 are bit p of the 32 bytes.

Scales and minimums multiply by `d`/`dmin` first and the products then scale q, in gguf-py's
order, so results match its reference bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ember.model.quant_blocks import (
    Bytes,
    Floats,
    decode_in_chunks,
    f16_column,
    split_nibbles,
    unpack_bits,
)

BLOCK_WEIGHTS = 256
SignedBytes = npt.NDArray[np.int8]


def _two_bit_planes(packed: Bytes) -> Bytes:
    """(n, 256) uint8 from 64 bytes of 2-bit fields per block, in weight order."""
    n = packed.shape[0]
    return unpack_bits(packed.reshape(n * 2, 32), 2, 4).reshape(n, BLOCK_WEIGHTS)


def _single_bits(packed: Bytes) -> Bytes:
    """(n, 256) uint8 from 32 bytes of single bits per block, in weight order."""
    return unpack_bits(packed, 1, 8).reshape(packed.shape[0], BLOCK_WEIGHTS)


def scale_min_6bit(packed: Bytes) -> tuple[Bytes, Bytes]:
    """Q4_K/Q5_K's 12 bytes as 8 scales and 8 minimums (n, 8), each 6 bits.

    Sub-blocks 0-3 take the low 6 bits of bytes 0-3 (scales) and 4-7 (minimums); sub-blocks
    4-7 take a nibble of bytes 8-11 (low: scale, high: minimum) below the top 2 bits of bytes
    0-3 (scales) and 4-7 (minimums).
    """
    low, high, extra = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 0x3F, (extra & 0x0F) | ((low >> 2) & 0x30)], axis=1)
    minimums = np.concatenate([high & 0x3F, (extra >> 4) | ((high >> 2) & 0x30)], axis=1)
    return scales, minimums


def _scales_q3_k(packed: Bytes) -> Bytes:
    """Q3_K's 12 bytes as 16 stored scales (n, 16), 6 bits each, still offset by 32.

    Scale i's low nibble is nibble i // 8 of byte i % 8; its top 2 bits are bit pair i // 4
    of byte 8 + i % 4.
    """
    n = packed.shape[0]
    low = split_nibbles(packed[:, :8], 1).reshape(n, 16)
    high = unpack_bits(packed[:, 8:12], 2, 4).reshape(n, 16)
    scales: Bytes = low | (high << np.uint8(4))
    return scales


def _affine(out: Floats, q: Bytes | SignedBytes, scale: Floats, minimum: Floats | None) -> None:
    """out = scale * q (- minimum) per sub-block: `scale`/`minimum` (n, sub-blocks)."""
    n, subs = scale.shape
    dest = out.reshape(n, subs, -1)
    np.multiply(q.reshape(n, subs, -1), scale[:, :, None], out=dest)
    if minimum is not None:
        np.subtract(dest, minimum[:, :, None], out=dest)


def _q2_k(chunk: Bytes, out: Floats) -> None:
    packed_scales = chunk[:, :16]
    scale = f16_column(chunk, 80) * (packed_scales & 0x0F)
    minimum = f16_column(chunk, 82) * (packed_scales >> 4)
    _affine(out, _two_bit_planes(chunk[:, 16:80]), scale, minimum)


def _q3_k(chunk: Bytes, out: Floats) -> None:
    q = _two_bit_planes(chunk[:, 32:96])
    q |= _single_bits(chunk[:, :32]) << np.uint8(2)
    signed = q.view(np.int8)
    signed -= 4
    scales = _scales_q3_k(chunk[:, 96:108]).view(np.int8)
    scales -= 32
    _affine(out, signed, f16_column(chunk, 108) * scales, None)


def _q4_k(chunk: Bytes, out: Floats) -> None:
    scales, minimums = scale_min_6bit(chunk[:, 4:16])
    q = split_nibbles(chunk[:, 16:144], 4)
    _affine(out, q, f16_column(chunk, 0) * scales, f16_column(chunk, 2) * minimums)


def _q5_k(chunk: Bytes, out: Floats) -> None:
    scales, minimums = scale_min_6bit(chunk[:, 4:16])
    q = split_nibbles(chunk[:, 48:176], 4).reshape(-1, BLOCK_WEIGHTS)
    q |= _single_bits(chunk[:, 16:48]) << np.uint8(4)
    _affine(out, q, f16_column(chunk, 0) * scales, f16_column(chunk, 2) * minimums)


def _q6_k(chunk: Bytes, out: Floats) -> None:
    q = split_nibbles(chunk[:, :128], 2).reshape(-1, BLOCK_WEIGHTS)
    q |= _two_bit_planes(chunk[:, 128:192]) << np.uint8(4)
    signed = q.view(np.int8)
    signed -= 32
    scales = chunk[:, 192:208].view(np.int8)
    _affine(out, signed, f16_column(chunk, 208) * scales, None)


def _chunked(decode_chunk: Callable[[Bytes, Floats], None]) -> Callable[[Bytes], Floats]:
    def decode(blocks: Bytes) -> Floats:
        return decode_in_chunks(blocks, BLOCK_WEIGHTS, decode_chunk)

    return decode


DECODERS: dict[GGMLQuantizationType, Callable[[Bytes], Floats]] = {
    GGMLQuantizationType.Q2_K: _chunked(_q2_k),
    GGMLQuantizationType.Q3_K: _chunked(_q3_k),
    GGMLQuantizationType.Q4_K: _chunked(_q4_k),
    GGMLQuantizationType.Q5_K: _chunked(_q5_k),
    GGMLQuantizationType.Q6_K: _chunked(_q6_k),
}
