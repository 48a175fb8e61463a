"""The CUDA backend on files llama.cpp's own `llama-quantize` wrote (tests/fixtures/
kquant_families: Q4_K_M and Q5_K_M, with Q6_K attn_v beside Q4_K/Q5_K q/k in one layer), against
the NumPy backend's logits on the same file, which tests/model/test_kquant_families.py checks
against llama.cpp's own. The prompts are the fixtures' and the continuation is llama.cpp's
greedy tokens: a batched prefill (GEMM path), decode steps of three sequences (the fused
GEMVs, or the separate kernels), and a 5-token prefill (the unfused GEMVs).

The bound per row (MEASURED_ON_CUDA, with the CPU test's HEADROOM): the CUDA kernels round
activations to int8 too (per 32 values in the GEMVs; fp16 GEMM inputs and KV cache), which on
these 4-layer random models with a spread-out head moves rows about as far as llama.cpp's 8-bit
activations move them from NumPy's. Measured on an H100 (2026-12-07), worst row over every
step: llama3-q4_k_m 11.6 %, qwen3-q4_k_m 6.2 %, qwen2-q5_k_m 10.9 % (its 5-token prefill),
fused and separate decode kernels within 0.5 % of each other. A K-quant block read wrongly
moves these rows by 17-230 % (the CPU test's notes); a part of q|k|v written to the wrong
columns, by far more (the kernel tests check those columns bit for bit).
Greedy tokens are not compared exactly: a few of llama.cpp's choices on these random models
are close calls that such rounding may flip."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from ember.kernels.quant_gemv import QuantType
from ember.model.config import ModelConfig
from ember.model.cuda.llama import CudaLlama
from ember.model.gguf_file import GGUFFile
from ember.model.llama_weights import LlamaWeights
from ember.model.numpy_llama import NumpyLlama
from tests.gpu.test_cuda_families import Sequences, reset
from tests.model.test_kquant_families import FIXTURES, HEADROOM, NAMES, goldens

MEASURED_ON_CUDA = {"llama3-q4_k_m": 0.1155, "qwen3-q4_k_m": 0.0622, "qwen2-q5_k_m": 0.1089}
# The int8 tensor-core GEMM (quant_mmq, `CudaLlama.use_mmq`) rounds x to int8 per 32 values,
# as llama.cpp's CUDA MMQ does, where the fp16 GEMM keeps 11 bits: measured on an H100
# (2026-12-08), a 360-row prefill of qwen3-q4_k_m moved 9.4 % of a row (llama3 and qwen2 stayed
# within the fp16 GEMM's bounds, 15 % and 14 %).
MEASURED_WITH_MMQ = MEASURED_ON_CUDA | {"qwen3-q4_k_m": 0.094}


@pytest.fixture(scope="module", params=NAMES)
def backends(request: pytest.FixtureRequest) -> Iterator[tuple[str, NumpyLlama, CudaLlama]]:
    name: str = request.param
    gguf = GGUFFile.open(FIXTURES / f"{name}.gguf")
    config = ModelConfig.from_gguf(gguf)
    reference = NumpyLlama(config, LlamaWeights.load(gguf, config))
    cuda = CudaLlama.load(gguf, config)
    yield name, reference, cuda
    cuda.close()


class Comparison:
    """Every step's CUDA logits against NumPy's, per row; the worst error is kept for the
    report (pytest -s prints it)."""

    def __init__(self, name: str, measured: dict[str, float] = MEASURED_ON_CUDA) -> None:
        self.name, self.bound, self.worst = name, HEADROOM * measured[name], 0.0

    def check(self, got: npt.NDArray[np.float32], want: npt.NDArray[np.float32], what: str) -> None:
        assert got.shape == want.shape and np.isfinite(got).all(), f"{self.name}: {what}"
        error = float((np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)).max())
        self.worst = max(self.worst, error)
        assert error <= self.bound, (
            f"{self.name}: {what}: CUDA logits {error:.4f} of a row from NumPy's "
            f"(bound {self.bound:.4f})"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused-decode", "separate-kernels"])
def test_cuda_logits_match_numpy_on_llama_quantize_files(
    backends: tuple[str, NumpyLlama, CudaLlama], fused: bool
) -> None:
    name, reference, cuda = backends
    cuda.fused_decode = fused
    golden = goldens(name)
    reset(reference, cuda, len(golden) + 1)
    compare = Comparison(name)
    seqs = Sequences()
    ids = [seqs.add(g.prompt) for g in golden]
    step = seqs.batch([(i, len(g.prompt)) for i, g in zip(ids, golden, strict=True)])
    compare.check(cuda.forward(step), reference.forward(step), "batched prefill")
    for n in range(len(golden[0].greedy)):
        for i, g in zip(ids, golden, strict=True):
            seqs.tokens[i].append(g.greedy[n])
        step = seqs.batch([(i, 1) for i in ids])
        compare.check(cuda.forward(step), reference.forward(step), f"decode step {n}")
    late = seqs.add(golden[0].prompt[:5])
    step = seqs.batch([(late, 5)])
    compare.check(cuda.forward(step), reference.forward(step), "a 5-token prefill")
    cuda.fused_decode = True
    print(f"{name} ({'fused' if fused else 'separate'}): worst row error {compare.worst:.4f}")


@pytest.mark.gpu
@pytest.mark.parametrize("mmq", [True, False], ids=["int8-mmq", "fp16-gemm"])
def test_a_prefill_of_many_rows_matches_numpy_on_either_k_quant_gemm(
    backends: tuple[str, NumpyLlama, CudaLlama], mmq: bool
) -> None:
    """Six 60-token prompts in one step: 360 rows of x, past the rows where K-quant products
    take the int8 tensor-core GEMM (quant_mmq) when it is on, so its quantised x is checked at
    the model's level against NumPy, and so is the fp16 GEMM's at the same size."""
    name, reference, cuda = backends
    seqs_count, length = 6, 60
    reset(reference, cuda, seqs_count)
    cuda.use_mmq = mmq
    assert cuda.kernels.quant_mmq.runs(QuantType.Q4_K)
    assert (cuda._mmq_workspace is not None) == mmq  # the int8 GEMM's x, only while it is on
    golden = goldens(name)
    seqs = Sequences()
    ids = []
    for j in range(seqs_count):
        prompt = golden[j % len(golden)].prompt
        ids.append(seqs.add([prompt[(j + t) % len(prompt)] for t in range(length)]))
    step = seqs.batch([(i, length) for i in ids])
    measured = MEASURED_WITH_MMQ if mmq else MEASURED_ON_CUDA
    try:
        Comparison(name, measured).check(
            cuda.forward(step), reference.forward(step), "a 360-row prefill"
        )
    finally:
        cuda.use_mmq = False
