"""Every kernel family a forward pass uses, loaded once into the current context."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ember.gpu.device import Device
from ember.kernels.attention import Attention
from ember.kernels.elementwise import Elementwise
from ember.kernels.embedding import Embedding
from ember.kernels.norm import Norm
from ember.kernels.quant_gemm import QuantGemm
from ember.kernels.quant_gemv import QuantGemv
from ember.kernels.quant_mmq import QuantMmq
from ember.kernels.rope import Rope
from ember.kernels.sampling import Sampling


@dataclass(frozen=True, slots=True)
class KernelSet:
    attention: Attention
    elementwise: Elementwise
    embedding: Embedding
    norm: Norm
    quant_gemm: QuantGemm
    quant_gemv: QuantGemv
    quant_mmq: QuantMmq
    rope: Rope
    sampling: Sampling

    @classmethod
    def load(cls, device: Device) -> KernelSet:
        return cls(
            attention=Attention.load(device),
            elementwise=Elementwise.load(device),
            embedding=Embedding.load(device),
            norm=Norm.load(device),
            quant_gemm=QuantGemm.load(device),
            quant_gemv=QuantGemv.load(device),
            quant_mmq=QuantMmq.load(device),
            rope=Rope.load(device),
            sampling=Sampling.load(device),
        )

    def unload(self) -> None:
        for f in fields(self):
            getattr(self, f.name).unload()
