"""The CUDA backend refuses what its kernels do not read yet (Q2_K and Q3_K: the CPU path reads
them), naming the file, the tensor, its type and the way out; the mixed q/k/v and gate/up of
the same file's first layer are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import ModelFormatError
from ember.model.loader import load_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_kquant.gguf"


@pytest.mark.gpu
def test_a_type_without_kernels_is_refused_with_the_tensor() -> None:
    with pytest.raises(ModelFormatError) as error:
        load_model(FIXTURE, "cuda", show_progress=False)
    message = str(error.value)
    assert str(FIXTURE) in message
    # Layer 0 (Q4_K q/k beside a Q6_K v, Q8_0 gate beside a Q5_K up) passed; layer 1's q is Q3_K.
    assert "'blk.1.attn_q.weight' is Q3_K" in message
    assert "--device cpu" in message
    # The same file runs on the CPU.
    assert load_model(FIXTURE, "cpu", show_progress=False).config.n_layers == 2
