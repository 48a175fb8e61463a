"""Dequantize GGML tensor data to float32 with NumPy: the reference GPU kernels are checked against.

The block formats live beside this module: `quant_legacy` (32-weight blocks: Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) and `quant_k` (256-weight K-quant super-blocks: Q2_K to Q6_K). Every decoder
matches gguf-py's reference dequantisation bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ember.errors import ModelFormatError
from ember.model import quant_k, quant_legacy
from ember.model.quant_blocks import Bytes, Floats


def _decode_f32(blocks: Bytes) -> Floats:
    return blocks.view("<f4").astype(np.float32, copy=False)


def _decode_f16(blocks: Bytes) -> Floats:
    return blocks.view("<f2").astype(np.float32)


def _decode_bf16(blocks: Bytes) -> Floats:
    # bfloat16 is the top half of a float32's bits.
    bits = blocks.view("<u2").astype(np.uint32)
    bits <<= 16
    return bits.view(np.float32)


# Each decoder takes the data as rows of whole blocks, (n_blocks, bytes per block), and returns
# (n_blocks, weights per block) float32.
_DECODERS: dict[GGMLQuantizationType, Callable[[Bytes], Floats]] = {
    GGMLQuantizationType.F32: _decode_f32,
    GGMLQuantizationType.F16: _decode_f16,
    GGMLQuantizationType.BF16: _decode_bf16,
    **quant_legacy.DECODERS,
    **quant_k.DECODERS,
}

SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(_DECODERS)


def supported_type_names() -> str:
    """The supported types as a human-readable list, for error messages."""
    return ", ".join(t.name for t in sorted(SUPPORTED_TYPES))


def check_shape(ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    """`ModelFormatError` unless `shape` (NumPy order) is rows of whole blocks of the type."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    if block_size > 1 and (not shape or shape[-1] % block_size != 0):
        raise ModelFormatError(
            f"{ggml_type.name} tensor of shape {shape}: row length must be a multiple of "
            f"the {block_size}-weight block"
        )


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
    check_shape(ggml_type, shape)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    data = _as_bytes(raw)
    expected = math.prod(shape) // block_size * type_size
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
