"""Decoders for GGML's 32-weight blocks (the types before K-quants).

Block layouts (ggml-common.h; gguf-py `quants.py`), all little-endian:

- Q8_0, 34 bytes: f16 scale `d`, then 32 int8 `q`;                          w = q * d
- Q4_0, 18 bytes: f16 `d`, then 16 bytes of nibbles;                        w = (q - 8) * d
- Q4_1, 20 bytes: f16 `d`, f16 minimum `m`, 16 bytes of nibbles;            w = q * d + m
- Q5_0, 22 bytes: f16 `d`, u32 of fifth bits, 16 bytes of nibbles;          w = (q - 16) * d
- Q5_1, 24 bytes: f16 `d`, f16 `m`, u32 of fifth bits, 16 bytes of nibbles; w = q * d + m

In the nibble types, byte j holds weight j in its low nibble and weight j + 16 in its high one;
in the 5-bit types bit j of the u32 is weight j's fifth (top) bit. Each formula is evaluated in
the same order as gguf-py's reference, so results match it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType

from ember.model.quant_blocks import Bytes, Floats, decode_in_chunks, f16_column, split_nibbles

BLOCK_WEIGHTS = 32


def _q8_0(chunk: Bytes, out: Floats) -> None:
    np.multiply(chunk[:, 2:].view(np.int8), f16_column(chunk, 0), out=out)


def _q4_0(chunk: Bytes, out: Floats) -> None:
    q = split_nibbles(chunk[:, 2:], 1).reshape(-1, BLOCK_WEIGHTS).view(np.int8)
    # Subtracting in int8 before scaling keeps the reference's rounding: (q - 8) * d.
    q -= 8
    np.multiply(q, f16_column(chunk, 0), out=out)


def _q4_1(chunk: Bytes, out: Floats) -> None:
    q = split_nibbles(chunk[:, 4:], 1).reshape(-1, BLOCK_WEIGHTS)
    np.multiply(q, f16_column(chunk, 0), out=out)
    out += f16_column(chunk, 2)


def _five_bit(nibbles: Bytes, fifth_bits: Bytes) -> Bytes:
    q = split_nibbles(nibbles, 1).reshape(-1, BLOCK_WEIGHTS)
    q |= np.unpackbits(fifth_bits, axis=1, bitorder="little") << np.uint8(4)
    return q


def _q5_0(chunk: Bytes, out: Floats) -> None:
    q = _five_bit(chunk[:, 6:], chunk[:, 2:6]).view(np.int8)
    q -= 16
    np.multiply(q, f16_column(chunk, 0), out=out)


def _q5_1(chunk: Bytes, out: Floats) -> None:
    q = _five_bit(chunk[:, 8:], chunk[:, 4:8])
    np.multiply(q, f16_column(chunk, 0), out=out)
    out += f16_column(chunk, 2)


def _chunked(decode_chunk: Callable[[Bytes, Floats], None]) -> Callable[[Bytes], Floats]:
    def decode(blocks: Bytes) -> Floats:
        return decode_in_chunks(blocks, BLOCK_WEIGHTS, decode_chunk)

    return decode


DECODERS: dict[GGMLQuantizationType, Callable[[Bytes], Floats]] = {
    GGMLQuantizationType.Q8_0: _chunked(_q8_0),
    GGMLQuantizationType.Q4_0: _chunked(_q4_0),
    GGMLQuantizationType.Q4_1: _chunked(_q4_1),
    GGMLQuantizationType.Q5_0: _chunked(_q5_0),
    GGMLQuantizationType.Q5_1: _chunked(_q5_1),
}
