"""Launch wrapper for synthetic.cu: random quantised weights made on the device."""

from __future__ import annotations

from typing import Final

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import family_interface
from ember.kernels.quant_gemv import QuantType

_INTERFACE: Final = family_interface("synthetic")
_THREADS: Final = 256
_BLOCKS: Final = 1024  # grid-stride loops: enough blocks to fill every SM
_SEED_MASK: Final = (1 << 63) - 1


class Synthetic:
    """The synthetic kernel family, loaded in the current context."""

    __slots__ = ("_f32", "_quant", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        self._quant: dict[QuantType, Kernel] = {
            q: _INTERFACE.kernel(module, f"synthetic_{q.name.lower()}") for q in QuantType
        }
        self._f32: Kernel = _INTERFACE.kernel(module, "synthetic_f32")

    @classmethod
    def load(cls, device: Device) -> Synthetic:
        return cls(load_family("synthetic", device))

    def fill_quant(
        self, out: DeviceArray, quant: QuantType, seed: int, scale: float, stream: Stream
    ) -> None:
        """Fill `out` (raw bytes, a whole number of blocks) with random `quant` blocks."""
        if out.nbytes % quant.block_bytes:
            raise ValueError(f"{out.nbytes} bytes are not whole {quant.name} blocks")
        count = out.nbytes // quant.block_bytes
        self._quant[quant].launch(
            (_BLOCKS, 1, 1),
            (_THREADS, 1, 1),
            out.ptr,
            count,
            seed & _SEED_MASK,
            scale,
            stream=stream,
        )

    def fill_f32(self, out: DeviceArray, seed: int, lo: float, hi: float, stream: Stream) -> None:
        self._f32.launch(
            (_BLOCKS, 1, 1),
            (_THREADS, 1, 1),
            out.ptr,
            out.size,
            seed & _SEED_MASK,
            lo,
            hi,
            stream=stream,
        )

    def unload(self) -> None:
        self.module.unload()
