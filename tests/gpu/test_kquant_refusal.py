"""The CUDA backend refuses what its kernels do not read yet (here: q/k/v stored in different
types, to be stacked into one matrix), naming the file, the tensors, their types and the way
out (the CPU backend reads them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import ModelFormatError
from ember.model.loader import load_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_kquant.gguf"


@pytest.mark.gpu
def test_mixed_qkv_file_is_refused_with_the_tensors_and_types() -> None:
    with pytest.raises(ModelFormatError) as error:
        load_model(FIXTURE, "cuda", show_progress=False)
    message = str(error.value)
    assert str(FIXTURE) in message
    assert "blk.0.attn_q.weight, blk.0.attn_k.weight, blk.0.attn_v.weight" in message
    assert "(Q4_K, Q6_K)" in message
    assert "--device cpu" in message
    # The same file runs on the CPU.
    assert load_model(FIXTURE, "cpu", show_progress=False).config.n_layers == 2
