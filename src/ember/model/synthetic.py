"""Synthetic models: real Llama shapes and quant layouts with random weights made on the GPU.

They exist to benchmark shapes whose files we do not carry (`ember bench --model
synthetic:llama-8b-q4_0`). Their tokenizer is a real byte-level one over a placeholder
vocabulary of the right size, so the whole engine runs unchanged; their text is meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from ember.errors import EmberError
from ember.model.config import ModelConfig, RopeConfig
from ember.model.tokenizer import Tokenizer, byte_alphabet_tokens

if TYPE_CHECKING:
    from ember.kernels.quant_gemv import QuantType
    from ember.model.cuda.llama import CudaLlama

PREFIX: Final = "synthetic:"
_LLAMA3_VOCAB: Final = 128256


def _llama(
    name: str,
    layers: int,
    d: int,
    heads: int,
    kv: int,
    ffn: int,
    tied: bool,
    vocab: int = _LLAMA3_VOCAB,
    rope_base: float = 500000.0,
) -> ModelConfig:
    return ModelConfig(
        architecture="llama",
        name=name,
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=d // heads,
        ffn_dim=ffn,
        vocab_size=vocab,
        context_length=8192,
        rms_eps=1e-5,
        rope=RopeConfig(base=rope_base, dim=d // heads),
        tied_embeddings=tied,
    )


# name -> (config, matrix quant, output head quant; a tied embedding is the head). Llama 3's
# Q4_0 files keep the output head in Q6_K, which Ember's kernels do not read; Q8_0 stands in for
# it (8.5 bits, not 6.56). smollm2-135m-q4_1 is the default model's exact shape and types, for
# profiling on a GPU machine that has not been sent the model file. Quant types are named, not
# imported: the loader checks `is_synthetic` on every load, and the kernels' module imports the
# CUDA bindings, which a CPU-only load has no use for.
PRESETS: Final = {
    "smollm2-135m-q4_1": (
        _llama("synthetic SmolLM2-135M shape", 30, 576, 9, 3, 1536, True, 49152, 100000.0),
        "Q4_1",
        "Q8_0",
    ),
    "llama-1b-q4_0": (
        _llama("synthetic Llama-3.2-1B shape", 16, 2048, 32, 8, 8192, tied=True),
        "Q4_0",
        "Q4_0",
    ),
    "llama-8b-q4_0": (
        _llama("synthetic Llama-3.1-8B shape", 32, 4096, 32, 8, 14336, tied=False),
        "Q4_0",
        "Q8_0",
    ),
}


def is_synthetic(model: str | Path | None) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def preset(model: str) -> tuple[ModelConfig, QuantType, QuantType]:
    from ember.kernels.quant_gemv import QuantType

    name = model.removeprefix(PREFIX)
    if name not in PRESETS:
        raise EmberError(
            f"unknown synthetic model {name!r}; choose one of "
            f"{', '.join(PREFIX + n for n in PRESETS)}"
        )
    config, quant, head_quant = PRESETS[name]
    return config, QuantType[quant], QuantType[head_quant]


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte tokens, one merge (two spaces), placeholder tokens 't<id>', an end-of-text token."""
    tokens = byte_alphabet_tokens()
    space = tokens[ord(" ")]
    tokens.append(space + space)
    tokens += [f"t{i}" for i in range(len(tokens), vocab_size - 1)]
    tokens.append("<|endoftext|>")
    types = [1] * (vocab_size - 1) + [3]
    return Tokenizer.from_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": [f"{space} {space}"],
            "tokenizer.ggml.eos_token_id": vocab_size - 1,
        },
        source="synthetic",
    )


def load_synthetic_backend(model: str, ordinal: int = 0) -> CudaLlama:
    from ember.model.cuda.llama import CudaLlama

    config, quant, head_quant = preset(model)
    return CudaLlama.synthetic(config, quant, head_quant, ordinal)
