"""Synthetic models: real Llama shapes and quant layouts with random weights made on the GPU.

They exist to benchmark shapes whose files we do not carry (`ember bench --model
synthetic:llama-8b-q4_0`). Their tokenizer is a real byte-level one over a placeholder
vocabulary of the right size, so the whole engine runs unchanged; their text is meaningless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ember.errors import EmberError
from ember.model.config import ModelConfig, RopeConfig
from ember.model.tokenizer import Tokenizer, byte_alphabet_tokens

if TYPE_CHECKING:
    from ember.model.cuda.llama import CudaLlama

PREFIX: Final = "synthetic:"
# The block type (a GGML type name) of the matrix stacking these tensors: TypeMix, KQuantMix.
TypeRule = Callable[[tuple[str, ...], ModelConfig], str]
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


# llama.cpp's fallbacks for a K-quant tensor whose rows are not whole 256-weight super-blocks
# (llama-quant.cpp): a 32-weight type of about the same bits.
_SMALL_BLOCK_FALLBACK: Final = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True, slots=True)
class KQuantMix:
    """The block types llama.cpp's `llama-quantize` gives a dense Llama-style model's tensors
    for a `_K_M` type (llama-quant.cpp's llama_tensor_get_type): `base` for most matrices,
    `more_bits` for attn_v and ffn_down in the layers its use_more_bits picks (the first and
    last eighth and every third between), Q6_K for the output head (or a tied embedding);
    a tensor whose rows are not whole 256-weight super-blocks falls back to a 32-weight type.
    Q4_K_M: base Q4_K, more_bits Q6_K; Q5_K_M: Q5_K and Q6_K."""

    base: str
    more_bits: str

    def __call__(self, names: tuple[str, ...], config: ModelConfig) -> str:
        types = {self._type(name, config) for name in names}
        if len(types) != 1:
            raise EmberError(f"{', '.join(names)} get different types: ask for each alone")
        return types.pop()

    def _type(self, name: str, config: ModelConfig) -> str:
        cols = config.d_model
        if name == "output.weight" or (config.tied_embeddings and name == "token_embd.weight"):
            kind = "Q6_K"
        elif name.startswith("blk."):
            layer = int(name.split(".")[1])
            role = name.split(".")[2]
            if role == "ffn_down":
                cols = config.ffn_dim
            more = role in ("attn_v", "ffn_down") and _use_more_bits(layer, config.n_layers)
            kind = self.more_bits if more else self.base
        else:
            kind = self.base
        return kind if cols % 256 == 0 else _SMALL_BLOCK_FALLBACK[kind]


def _use_more_bits(layer: int, layers: int) -> bool:
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


# name -> (config, type mix). Llama 3's Q4_0 files keep the output head in Q6_K, which Ember's
# kernels do not read; Q8_0 stands in for it (8.5 bits, not 6.56). smollm2-135m-q4_1 is the
# default model's exact shape and types, for profiling on a GPU machine that has not been sent
# the model file.
_SMOLLM2_135M: Final = _llama(
    "synthetic SmolLM2-135M shape", 30, 576, 9, 3, 1536, True, 49152, 100000.0
)
_LLAMA_1B: Final = _llama("synthetic Llama-3.2-1B shape", 16, 2048, 32, 8, 8192, tied=True)
_LLAMA_8B: Final = _llama("synthetic Llama-3.1-8B shape", 32, 4096, 32, 8, 14336, tied=False)
PRESETS: Final[dict[str, tuple[ModelConfig, TypeRule]]] = {
    "smollm2-135m-q4_1": (_SMOLLM2_135M, TypeMix("Q4_1", "Q8_0")),
    "llama-1b-q4_0": (_LLAMA_1B, TypeMix("Q4_0", "Q4_0")),
    "llama-8b-q4_0": (_LLAMA_8B, TypeMix("Q4_0", "Q8_0")),
    "qwen3-8b-q4_0": (_qwen3_8b(), TypeMix("Q4_0", "Q8_0")),
    # What llama-quantize makes of these models: the files people download most.
    "smollm2-135m-q4_k_m": (_SMOLLM2_135M, KQuantMix("Q4_K", "Q6_K")),
    "llama-1b-q4_k_m": (_LLAMA_1B, KQuantMix("Q4_K", "Q6_K")),
    "llama-8b-q4_k_m": (_LLAMA_8B, KQuantMix("Q4_K", "Q6_K")),
    "llama-8b-q5_k_m": (_LLAMA_8B, KQuantMix("Q5_K", "Q6_K")),
    "qwen3-8b-q4_k_m": (_qwen3_8b(), KQuantMix("Q4_K", "Q6_K")),
}


def is_synthetic(model: str | Path | None) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def preset(model: str) -> tuple[ModelConfig, TypeRule]:
    name = model.removeprefix(PREFIX)
    if name not in PRESETS:
        raise EmberError(
            f"unknown synthetic model {name!r}; choose one of "
            f"{', '.join(PREFIX + n for n in PRESETS)}"
        )
    return PRESETS[name]


@dataclass(frozen=True, slots=True)
class SyntheticVocabulary:
    """A byte-level BPE vocabulary (GGUF's `gpt2` tokenizer model) of a given size: byte
    tokens, one merge (two spaces), placeholder tokens 't<id>', an end-of-text token."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int


def synthetic_vocabulary(vocab_size: int) -> SyntheticVocabulary:
    tokens = byte_alphabet_tokens()
    space = tokens[ord(" ")]
    tokens.append(space + space)
    tokens += [f"t{i}" for i in range(len(tokens), vocab_size - 1)]
    tokens.append("<|endoftext|>")
    types = [1] * (vocab_size - 1) + [3]
    return SyntheticVocabulary(tokens, types, [f"{space} {space}"], vocab_size - 1)


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    vocabulary = synthetic_vocabulary(vocab_size)
    return Tokenizer.from_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": vocabulary.tokens,
            "tokenizer.ggml.token_type": vocabulary.token_types,
            "tokenizer.ggml.merges": vocabulary.merges,
            "tokenizer.ggml.eos_token_id": vocabulary.eos_id,
        },
        source="synthetic",
    )


def load_synthetic_backend(model: str, ordinal: int = 0) -> CudaLlama:
    from ember.model.cuda.llama import CudaLlama

    config, types = preset(model)
    return CudaLlama.synthetic(config, types, ordinal)
