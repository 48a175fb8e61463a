"""Model hyper-parameters read from GGUF metadata (the Llama family: llama, qwen2, qwen3).

The architectures differ only in facts read from the file: optional tensors (q/k/v biases,
per-head q/k norms, RoPE frequency factors), metadata (sliding window, RoPE scaling) and, per
architecture, the RoPE layout llama.cpp hard-codes (`llama_model_rope_type`). One forward pass
reads these flags; no class per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from ember.errors import ModelFormatError

if TYPE_CHECKING:
    from ember.model.gguf_file import GGUFFile

# "adjacent": llama.cpp's "normal" RoPE, rotating pairs (x[2i], x[2i+1]); its converter permutes
# Llama's q/k rows to match. "halves": NEOX RoPE, rotating (x[i], x[i + d/2]) as HF does; qwen2
# and qwen3 weights are stored unpermuted and use it (llama.cpp's `llama_model_rope_type`).
RopeStyle = Literal["adjacent", "halves"]
_ROPE_STYLES: Final[dict[str, RopeStyle]] = {
    "llama": "adjacent",
    "qwen2": "halves",
    "qwen3": "halves",
}
SUPPORTED_ARCHITECTURES: Final = tuple(_ROPE_STYLES)

_GLOBAL_TENSORS: Final = ("token_embd.weight", "output_norm.weight")
_LAYER_TENSORS: Final = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)
_BIAS_TENSORS: Final = ("attn_q.bias", "attn_k.bias", "attn_v.bias")
_QK_NORM_TENSORS: Final = ("attn_q_norm.weight", "attn_k_norm.weight")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    base: float
    dim: int
    # Linear ("position interpolation") scaling divides positions by this factor; 1.0 = none.
    linear_factor: float = 1.0
    style: RopeStyle = "adjacent"
    # Llama 3.1's frequency scaling: each of the dim / 2 frequencies divided by its factor
    # (the `rope_freqs.weight` tensor, which llama.cpp's converter writes from the model's
    # `rope_scaling` of type llama3); None = all 1.
    freq_factors: tuple[float, ...] | None = None


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
    # Qwen2: biases on the q, k and v projections (`blk.N.attn_{q,k,v}.bias`).
    qkv_bias: bool = False
    # Qwen3: RMSNorm of every q and k head before RoPE (`blk.N.attn_{q,k}_norm.weight`).
    qk_norm: bool = False
    # Mistral-style local attention: a token sees itself and the window - 1 tokens before it.
    sliding_window: int | None = None

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def features(self) -> tuple[str, ...]:
        """The optional features this model uses, for `ember info` and error messages."""
        rope = self.rope
        named = (
            (self.qkv_bias, "q/k/v biases"),
            (self.qk_norm, "q/k norms"),
            (self.sliding_window is not None, f"sliding window {self.sliding_window}"),
            (rope.style == "halves", "rope halves (neox)"),
            (rope.freq_factors is not None, "rope frequency factors (rope_freqs)"),
            (rope.linear_factor != 1.0, f"rope linear scaling {rope.linear_factor:g}"),
        )
        return tuple(name for on, name in named if on)

    @property
    def n_params(self) -> int:
        per_layer = (
            self.d_model * (self.q_dim + 2 * self.kv_dim)
            + self.q_dim * self.d_model
            + 3 * self.d_model * self.ffn_dim
            + 2 * self.d_model
            + (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0)
            + (2 * self.head_dim if self.qk_norm else 0)
        )
        head = 0 if self.tied_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model + head

    def tensor_names(self) -> tuple[str, ...]:
        """Every tensor this model reads, in file order (the optional ones it uses included)."""
        layer = list(_LAYER_TENSORS)
        if self.qkv_bias:
            layer += _BIAS_TENSORS
        if self.qk_norm:
            layer += _QK_NORM_TENSORS
        names = [*_GLOBAL_TENSORS, *(f"blk.{i}.{n}" for i in range(self.n_layers) for n in layer)]
        if not self.tied_embeddings:
            names.append("output.weight")
        if self.rope.freq_factors is not None:
            names.append("rope_freqs.weight")
        return tuple(names)

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        arch = gguf.architecture
        style = _ROPE_STYLES.get(arch)
        if style is None:
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
        key_length = gguf.get(f"{arch}.attention.key_length")
        if key_length is None and d_model % n_heads != 0:
            raise ModelFormatError(
                f"{gguf.path}: embedding_length {d_model} is not divisible by head_count {n_heads}"
            )
        head_dim = _optional_int(gguf, f"{arch}.attention.key_length", d_model // n_heads)
        value_dim = _optional_int(gguf, f"{arch}.attention.value_length", head_dim)
        if value_dim != head_dim:
            raise ModelFormatError(
                f"{gguf.path}: {arch}.attention.value_length {value_dim} differs from "
                f"key_length {head_dim}; Ember needs equal key and value head sizes"
            )
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
        n_layers = gguf.require_int(f"{arch}.block_count")
        config = cls(
            architecture=arch,
            name=str(gguf.get("general.name", gguf.path.stem)),
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=gguf.require_int(f"{arch}.feed_forward_length"),
            vocab_size=vocab_size,
            context_length=gguf.require_int(f"{arch}.context_length"),
            rms_eps=gguf.require_float(f"{arch}.attention.layer_norm_rms_epsilon"),
            rope=_rope_config(gguf, arch, rope_dim, style),
            tied_embeddings=not gguf.has_tensor("output.weight"),
            qkv_bias=_optional_layer_tensors(gguf, n_layers, _BIAS_TENSORS),
            qk_norm=_optional_layer_tensors(gguf, n_layers, _QK_NORM_TENSORS),
            sliding_window=_sliding_window(gguf, arch),
        )
        _refuse_unused_tensors(gguf, config)
        return config


def _optional_int(gguf: GGUFFile, key: str, default: int) -> int:
    return gguf.require_int(key) if gguf.get(key) is not None else default


def _optional_layer_tensors(gguf: GGUFFile, n_layers: int, names: tuple[str, ...]) -> bool:
    """Whether every layer has all of `names`; a file with some of them but not all is broken
    (a missing bias would run as zero: output slightly wrong, never an error)."""
    wanted = [f"blk.{i}.{n}" for i in range(n_layers) for n in names]
    present = [name for name in wanted if gguf.has_tensor(name)]
    if present and len(present) != len(wanted):
        missing = next(name for name in wanted if not gguf.has_tensor(name))
        raise ModelFormatError(
            f"{gguf.path}: has {present[0]!r} but no tensor {missing!r}; these optional "
            f"tensors must be in every layer or in none: {', '.join(names)}"
        )
    return bool(present)


def _refuse_unused_tensors(gguf: GGUFFile, config: ModelConfig) -> None:
    """A tensor the forward pass would not read means a feature Ember does not implement
    (an output bias, a post-norm ...): refused rather than run slightly wrong."""
    used = set(config.tensor_names())
    unused = [name for name in gguf.tensors if name not in used]
    if unused:
        shown = ", ".join(repr(n) for n in unused[:5])
        more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
        raise ModelFormatError(
            f"{gguf.path}: tensor {shown}{more} is not used by Ember's {config.architecture} "
            "forward pass (a feature Ember does not implement); refusing to run without it"
        )


def _sliding_window(gguf: GGUFFile, arch: str) -> int | None:
    key = f"{arch}.attention.sliding_window"
    if gguf.get(key) is None:
        return None
    window = gguf.require_int(key)
    if window < 0:
        raise ModelFormatError(f"{gguf.path}: {key} is {window}; it must be positive (or 0: off)")
    return window or None


def _rope_config(gguf: GGUFFile, arch: str, dim: int, style: RopeStyle) -> RopeConfig:
    base_raw = gguf.get(f"{arch}.rope.freq_base", 10000.0)
    if not isinstance(base_raw, int | float):
        raise ModelFormatError(f"{gguf.path}: {arch}.rope.freq_base must be a number")
    scaling = gguf.get(f"{arch}.rope.scaling.type", "none")
    factor_raw = gguf.get(f"{arch}.rope.scaling.factor", 1.0)
    factor = float(factor_raw) if isinstance(factor_raw, int | float) else 1.0
    freq_factors = _freq_factors(gguf, dim)
    if scaling in ("none", None) or factor == 1.0:
        factor = 1.0
    elif scaling != "linear":
        raise ModelFormatError(
            f"{gguf.path}: {arch}.rope.scaling.type {scaling!r} is not supported "
            "(supported: none, linear, and Llama 3's rope_freqs tensor)"
        )
    return RopeConfig(
        base=float(base_raw),
        dim=dim,
        linear_factor=factor,
        style=style,
        freq_factors=freq_factors,
    )


def _freq_factors(gguf: GGUFFile, dim: int) -> tuple[float, ...] | None:
    if not gguf.has_tensor("rope_freqs.weight"):
        return None
    factors = gguf.load("rope_freqs.weight", (dim // 2,))
    if not (factors > 0).all():
        raise ModelFormatError(
            f"{gguf.path}: tensor 'rope_freqs.weight' has a factor <= 0 or NaN; "
            "frequency divisors must be positive"
        )
    return tuple(float(f) for f in factors)
