"""Synthetic models: real Llama shapes and quant layouts with random weights made on the GPU.

They exist to benchmark shapes whose files we do not carry (`ember bench --model
synthetic:llama-8b-q4_0`). Their tokenizer is a real byte-level one over a placeholder
vocabulary of the right size, so the whole engine runs unchanged; their text is meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ember.errors import EmberError
from ember.model.config import ModelConfig, RopeConfig
from ember.model.tokenizer import Tokenizer, byte_alphabet_tokens

if TYPE_CHECKING:
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


def _qwen3_8b() -> ModelConfig:
    """Qwen3-8B's dimensions (its config.json): per-head q/k norms, NEOX RoPE, no biases."""
    return ModelConfig(
        architecture="qwen3",
        name="synthetic Qwen3-8B shape",
        n_layers=36,
        d_model=4096,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        ffn_dim=12288,
        vocab_size=151936,
        context_length=40960,
        rms_eps=1e-6,
        rope=RopeConfig(base=1000000.0, dim=128, style="halves"),
        tied_embeddings=False,
        qk_norm=True,
    )


@dataclass(frozen=True, slots=True)
class TypeMix:
    """The block type (a GGML type name) of each synthetic matrix, by the tensors it stacks:
    `matrices` for the layers' projections and an untied embedding, `head` for the output head
    (the embedding, when tied). A mix that varies per tensor (llama.cpp's Q4_K_M: some
    ffn_down and attn_v in Q6_K) is any callable of the same signature.

    Types are named, not imported: the loader checks `is_synthetic` on every load, and the
    kernels' module imports the CUDA bindings, which a CPU-only load has no use for."""

    matrices: str
    head: str

    def __call__(self, names: tuple[str, ...], config: ModelConfig) -> str:
        head = names == ("output.weight",) or (
            config.tied_embeddings and names == ("token_embd.weight",)
        )
        return self.head if head else self.matrices


# name -> (config, type mix). Llama 3's Q4_0 files keep the output head in Q6_K, which Ember's
# kernels do not read; Q8_0 stands in for it (8.5 bits, not 6.56). smollm2-135m-q4_1 is the
# default model's exact shape and types, for profiling on a GPU machine that has not been sent
# the model file.
PRESETS: Final = {
    "smollm2-135m-q4_1": (
        _llama("synthetic SmolLM2-135M shape", 30, 576, 9, 3, 1536, True, 49152, 100000.0),
        TypeMix("Q4_1", "Q8_0"),
    ),
    "llama-1b-q4_0": (
        _llama("synthetic Llama-3.2-1B shape", 16, 2048, 32, 8, 8192, tied=True),
        TypeMix("Q4_0", "Q4_0"),
    ),
    "llama-8b-q4_0": (
        _llama("synthetic Llama-3.1-8B shape", 32, 4096, 32, 8, 14336, tied=False),
        TypeMix("Q4_0", "Q8_0"),
    ),
    "qwen3-8b-q4_0": (_qwen3_8b(), TypeMix("Q4_0", "Q8_0")),
}


def is_synthetic(model: str | Path | None) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def preset(model: str) -> tuple[ModelConfig, TypeMix]:
    name = model.removeprefix(PREFIX)
    if name not in PRESETS:
        raise EmberError(
            f"unknown synthetic model {name!r}; choose one of "
            f"{', '.join(PREFIX + n for n in PRESETS)}"
        )
    return PRESETS[name]


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

    config, types = preset(model)
    return CudaLlama.synthetic(config, types, ordinal)
