"""Dequantize GGML tensor data to float32 with NumPy: the reference GPU kernels are checked against.

Block layouts (ggml-common.h; gguf-py `quants.py`), all little-endian, 32 weights per block:

- Q8_0, 34 bytes: f16 scale `d`, then 32 int8 `q`;                    w = q * d
- Q4_0, 18 bytes: f16 scale `d`, then 16 bytes of nibbles;            w = (q - 8) * d
- Q4_1, 20 bytes: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; w = q * d + m

In the 4-bit types, byte j of a block holds weight j in its low nibble and weight j + 16 in its
high nibble. Each formula is evaluated in the same order as gguf-py's reference, so results
match it bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ember.errors import ModelFormatError

SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.BF16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
    }
)

Bytes = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

# Blocks per NumPy call: the 4-bit types make three passes over their output, and 4096 blocks
# (512 KiB of float32) keep those passes in cache; whole-tensor passes measured 1.2-1.4x slower.
_CHUNK_BLOCKS = 4096
_NIBBLES = 16  # a 32-weight block packs two weights per byte


def supported_type_names() -> str:
    """The supported types as a human-readable list, for error messages."""
    return ", ".join(t.name for t in sorted(SUPPORTED_TYPES))


def dequantize(
    raw: npt.NDArray[np.generic], ggml_type: GGMLQuantizationType, shape: tuple[int, ...]
) -> Floats:
    """Float32 array of `shape` (NumPy order) decoded from `raw`, the tensor's bytes in the file.

    `raw` may be the uint8 array GGUFReader gives for block types or its typed array for
    F32/F16; only its bytes matter. F32 data comes back as a no-copy view of `raw` (read-only
    if `raw` is); every other type comes back as a new array.
    """
    if ggml_type not in SUPPORTED_TYPES:
        raise ModelFormatError(
            f"cannot dequantize tensor type {_type_name(ggml_type)}; "
            f"supported types: {supported_type_names()}"
        )
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_elements = math.prod(shape)
    if block_size > 1 and (not shape or shape[-1] % block_size != 0):
        raise ModelFormatError(
            f"{ggml_type.name} tensor of shape {shape}: row length must be a multiple of "
            f"the {block_size}-weight block"
        )
    data = _as_bytes(raw)
    expected = n_elements // block_size * type_size
    if data.size != expected:
        raise ModelFormatError(
            f"{ggml_type.name} tensor of shape {shape} needs {expected} bytes, got {data.size}"
        )
    return _DECODERS[ggml_type](data.reshape(-1, type_size)).reshape(shape)


def _type_name(ggml_type: object) -> str:
    return ggml_type.name if isinstance(ggml_type, GGMLQuantizationType) else repr(ggml_type)


def _as_bytes(raw: npt.NDArray[np.generic]) -> Bytes:
    # ascontiguousarray is a no-op for GGUFReader's memmap slices, so nothing is copied here.
    return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)


# Each decoder takes the data as rows of whole blocks, (n_blocks, bytes per block), and returns
# (n_blocks, weights per block) float32.
def _decode_f32(blocks: Bytes) -> Floats:
    return blocks.view("<f4").astype(np.float32, copy=False)


def _decode_f16(blocks: Bytes) -> Floats:
    return blocks.view("<f2").astype(np.float32)


def _decode_bf16(blocks: Bytes) -> Floats:
    # bfloat16 is the top half of a float32's bits.
    bits = blocks.view("<u2").astype(np.uint32)
    bits <<= 16
    return bits.view(np.float32)


def _decode_q8_0(blocks: Bytes) -> Floats:
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        scale = chunk[:, :2].view("<f2").astype(np.float32)
        np.multiply(chunk[:, 2:].view(np.int8), scale, out=out[start : start + _CHUNK_BLOCKS])
    return out


def _decode_q4_0(blocks: Bytes) -> Floats:
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        dest = out[start : start + _CHUNK_BLOCKS]
        scale = chunk[:, :2].view("<f2").astype(np.float32)
        packed = chunk[:, 2:]
        # Subtracting 8 in int8 before scaling keeps the reference's rounding: (q - 8) * d.
        low = (packed & 0x0F).view(np.int8)
        low -= 8
        high = (packed >> 4).view(np.int8)
        high -= 8
        np.multiply(low, scale, out=dest[:, :_NIBBLES])
        np.multiply(high, scale, out=dest[:, _NIBBLES:])
    return out


def _decode_q4_1(blocks: Bytes) -> Floats:
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        chunk = blocks[start : start + _CHUNK_BLOCKS]
        dest = out[start : start + _CHUNK_BLOCKS]
        scale = chunk[:, :2].view("<f2").astype(np.float32)
        minimum = chunk[:, 2:4].view("<f2").astype(np.float32)
        packed = chunk[:, 4:]
        np.multiply(packed & 0x0F, scale, out=dest[:, :_NIBBLES])
        np.multiply(packed >> 4, scale, out=dest[:, _NIBBLES:])
        dest += minimum
    return out


_DECODERS: dict[GGMLQuantizationType, Callable[[Bytes], Floats]] = {
    GGMLQuantizationType.F32: _decode_f32,
    GGMLQuantizationType.F16: _decode_f16,
    GGMLQuantizationType.BF16: _decode_bf16,
    GGMLQuantizationType.Q8_0: _decode_q8_0,
    GGMLQuantizationType.Q4_0: _decode_q4_0,
    GGMLQuantizationType.Q4_1: _decode_q4_1,
}
