"""Launch wrapper for embedding.cu: token ids to float32 rows of a (quantised) GGUF table."""

from __future__ import annotations

from typing import Final

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface

_INTERFACE: Final = family_interface("embedding")
_I32: Final = np.dtype(np.int32)
_F32: Final = np.dtype(np.float32)
_THREADS: Final = 256
# Bytes per row of d weights, by table type.
_ROW_BYTES: Final = {
    GGMLQuantizationType.F32: lambda d: 4 * d,
    GGMLQuantizationType.F16: lambda d: 2 * d,
    GGMLQuantizationType.Q4_0: lambda d: d // 32 * 18,
    GGMLQuantizationType.Q4_1: lambda d: d // 32 * 20,
    GGMLQuantizationType.Q8_0: lambda d: d // 32 * 34,
    GGMLQuantizationType.Q5_0: lambda d: d // 32 * 22,
    GGMLQuantizationType.Q5_1: lambda d: d // 32 * 24,
    GGMLQuantizationType.Q4_K: lambda d: d // 256 * 144,
    GGMLQuantizationType.Q5_K: lambda d: d // 256 * 176,
    GGMLQuantizationType.Q6_K: lambda d: d // 256 * 210,
}


class Embedding:
    """The embedding kernel family, loaded in the current context."""

    __slots__ = ("_kernels", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._kernels: dict[GGMLQuantizationType, Kernel] = {
            t: _INTERFACE.kernel(module, f"embedding_{t.name.lower()}") for t in _ROW_BYTES
        }

    @classmethod
    def load(cls, device: Device) -> Embedding:
        return cls(load_family("embedding", device))

    @staticmethod
    def supports(table_type: GGMLQuantizationType) -> bool:
        return table_type in _ROW_BYTES

    def lookup_launch(
        self,
        table: DeviceArray,
        table_type: GGMLQuantizationType,
        ids: DeviceArray,
        out: DeviceArray,
        previous: DeviceArray | None = None,
    ) -> Launch:
        """out[t] = row ids[t] of `table` (raw GGUF bytes as uint8 [vocab, row bytes]), float32
        [T, d]; an id outside the vocabulary gives a row of zeros, except that with `previous`
        (int32, the previous step's sampled ids) an id of -2 - r stands for previous[r]."""
        if table_type not in _ROW_BYTES:
            raise ValueError(f"no embedding kernel for {table_type.name} tables")
        if ids.dtype != _I32 or out.dtype != _F32 or len(out.shape) != 2:
            raise TypeError(
                f"embedding needs int32 ids and float32 out [T, d], got "
                f"{ids.dtype}, {out.dtype}{list(out.shape)}"
            )
        tokens, d = out.shape
        if ids.shape != (tokens,):
            raise ValueError(f"embedding needs ids [{tokens}], got {ids.shape}")
        if previous is not None and (previous.dtype != _I32 or len(previous.shape) != 1):
            raise TypeError(f"previous ids must be int32 [R], got {previous.dtype}{previous.shape}")
        if len(table.shape) != 2 or table.nbytes // table.shape[0] != _ROW_BYTES[table_type](d):
            raise ValueError(
                f"{table_type.name} table of shape {table.shape} ({table.dtype}) "
                f"does not hold rows of {d} values"
            )
        block = GGML_QUANT_SIZES[table_type][0]
        if d % block:
            raise ValueError(
                f"a {table_type.name} table needs d a multiple of its {block}-weight block, got {d}"
            )
        return Launch(
            self._kernels[table_type],
            (max(1, tokens), 1, 1),
            (_THREADS, 1, 1),
            (
                table.ptr,
                ids.ptr,
                0 if previous is None else previous.ptr,
                out.ptr,
                d,
                table.shape[0],
            ),
        )

    def lookup(
        self,
        table: DeviceArray,
        table_type: GGMLQuantizationType,
        ids: DeviceArray,
        out: DeviceArray,
        stream: Stream | None = None,
        previous: DeviceArray | None = None,
    ) -> None:
        if ids.size:
            self.lookup_launch(table, table_type, ids, out, previous)(stream)

    def unload(self) -> None:
        self.module.unload()
