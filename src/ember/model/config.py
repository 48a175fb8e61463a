"""Model hyper-parameters read from GGUF metadata (Llama architecture family)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.errors import ModelFormatError

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True, slots=True)
class RopeConfig:
    base: float
    dim: int
    # Linear ("position interpolation") scaling divides positions by this factor; 1.0 = none.
    linear_factor: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    rms_eps: float
    rope: RopeConfig
    tied_embeddings: bool

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        per_layer = (
            self.d_model * (self.q_dim + 2 * self.kv_dim)
            + self.q_dim * self.d_model
            + 3 * self.d_model * self.ffn_dim
            + 2 * self.d_model
        )
        head = 0 if self.tied_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model + head

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        arch = gguf.architecture
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelFormatError(
                f"{gguf.path}: unsupported architecture {arch!r}; "
                f"Ember supports {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        d_model = gguf.require_int(f"{arch}.embedding_length")
        n_heads = gguf.require_int(f"{arch}.attention.head_count")
        n_kv_heads_raw = gguf.get(f"{arch}.attention.head_count_kv", n_heads)
        if not isinstance(n_kv_heads_raw, int):
            raise ModelFormatError(
                f"{gguf.path}: {arch}.attention.head_count_kv must be a single integer "
                "(per-layer head counts are not supported)"
            )
        n_kv_heads = n_kv_heads_raw
        if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads != 0:
            raise ModelFormatError(
                f"{gguf.path}: head_count {n_heads} is not a positive multiple of "
                f"head_count_kv {n_kv_heads}"
            )
        if d_model % n_heads != 0:
            raise ModelFormatError(
                f"{gguf.path}: embedding_length {d_model} is not divisible by head_count {n_heads}"
            )
        head_dim = _optional_int(gguf, f"{arch}.attention.key_length", d_model // n_heads)
        rope_dim = _optional_int(gguf, f"{arch}.rope.dimension_count", head_dim)
        if rope_dim != head_dim:
            raise ModelFormatError(
                f"{gguf.path}: partial rotary embeddings (rope dim {rope_dim} of head dim "
                f"{head_dim}) are not supported"
            )
        token_embd = gguf.tensors.get("token_embd.weight")
        if token_embd is None:
            raise ModelFormatError(f"{gguf.path}: missing tensor 'token_embd.weight'")
        vocab_size = _optional_int(gguf, f"{arch}.vocab_size", token_embd.shape[0])
        return cls(
            architecture=arch,
            name=str(gguf.get("general.name", gguf.path.stem)),
            n_layers=gguf.require_int(f"{arch}.block_count"),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=gguf.require_int(f"{arch}.feed_forward_length"),
            vocab_size=vocab_size,
            context_length=gguf.require_int(f"{arch}.context_length"),
            rms_eps=gguf.require_float(f"{arch}.attention.layer_norm_rms_epsilon"),
            rope=_rope_config(gguf, arch, rope_dim),
            tied_embeddings=not gguf.has_tensor("output.weight"),
        )


def _optional_int(gguf: GGUFFile, key: str, default: int) -> int:
    return gguf.require_int(key) if gguf.get(key) is not None else default


def _rope_config(gguf: GGUFFile, arch: str, dim: int) -> RopeConfig:
    base_raw = gguf.get(f"{arch}.rope.freq_base", 10000.0)
    if not isinstance(base_raw, int | float):
        raise ModelFormatError(f"{gguf.path}: {arch}.rope.freq_base must be a number")
    scaling = gguf.get(f"{arch}.rope.scaling.type", "none")
    factor_raw = gguf.get(f"{arch}.rope.scaling.factor", 1.0)
    factor = float(factor_raw) if isinstance(factor_raw, int | float) else 1.0
    if scaling in ("none", None) or factor == 1.0:
        return RopeConfig(base=float(base_raw), dim=dim)
    if scaling == "linear":
        return RopeConfig(base=float(base_raw), dim=dim, linear_factor=factor)
    raise ModelFormatError(
        f"{gguf.path}: rope scaling {scaling!r} is not supported (supported: none, linear)"
    )
