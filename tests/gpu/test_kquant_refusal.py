"""The CUDA backend refuses tensor types its kernels do not read yet, naming the tensor, its
type and the way out (the CPU backend reads them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import ModelFormatError
from ember.model.loader import load_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_kquant.gguf"


@pytest.mark.gpu
def test_k_quant_file_is_refused_with_the_tensor_and_type() -> None:
    with pytest.raises(ModelFormatError) as error:
        load_model(FIXTURE, "cuda", show_progress=False)
    message = str(error.value)
    assert str(FIXTURE) in message and "'blk.0.attn_q.weight' is Q4_K" in message
    assert "--device cpu" in message
    # The same file runs on the CPU.
    assert load_model(FIXTURE, "cpu", show_progress=False).config.n_layers == 2
