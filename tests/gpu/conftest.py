"""GPU test fixtures. Tests marked `gpu` skip, with the reason, where CUDA is not usable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ember.gpu import Context, Device, Stream, cuda_available
from ember.kernels.attention import Attention
from ember.kernels.elementwise import Elementwise
from ember.kernels.embedding import Embedding
from ember.kernels.norm import Norm
from ember.kernels.quant_gemm import QuantGemm
from ember.kernels.quant_gemv import QuantGemv
from ember.kernels.quant_mmq import QuantMmq
from ember.kernels.rope import Rope
from ember.kernels.sampling import Sampling

_AVAILABLE, _REASON = cuda_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _AVAILABLE:
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA: {_REASON}")
    for item in items:
        # Not `"gpu" in item.keywords`: keywords hold the folder name, so that would match
        # every test in this folder, CPU-only ones included.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> Device:
    return Device.get(0)


@pytest.fixture(scope="session")
def context(device: Device) -> Iterator[Context]:
    ctx = device.retain_primary_context()
    ctx.make_current()
    yield ctx
    ctx.synchronize()
    ctx.release()


@pytest.fixture
def stream(context: Context) -> Iterator[Stream]:
    with Stream.create() as s:
        yield s


@pytest.fixture(scope="session")
def elementwise(context: Context, device: Device) -> Iterator[Elementwise]:
    family = Elementwise.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def norm(context: Context, device: Device) -> Iterator[Norm]:
    family = Norm.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def rope(context: Context, device: Device) -> Iterator[Rope]:
    family = Rope.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def quant_gemv(context: Context, device: Device) -> Iterator[QuantGemv]:
    family = QuantGemv.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def quant_gemm(context: Context, device: Device) -> Iterator[QuantGemm]:
    family = QuantGemm.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def quant_mmq(context: Context, device: Device) -> Iterator[QuantMmq]:
    family = QuantMmq.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def attention(context: Context, device: Device) -> Iterator[Attention]:
    family = Attention.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def embedding(context: Context, device: Device) -> Iterator[Embedding]:
    family = Embedding.load(device)
    yield family
    family.unload()


@pytest.fixture(scope="session")
def sampling(context: Context, device: Device) -> Iterator[Sampling]:
    family = Sampling.load(device)
    yield family
    family.unload()
