"""Write tests/fixtures/tiny_kquant.gguf: a tiny Llama whose tensors come in every block type.

It is laid out the way llama.cpp's K-quant files are, at a size the tests load in
milliseconds: matrices in K-quants (256-weight super-blocks) where a row is whole super-blocks,
and in Q5_0/Q5_1 where it is not (`ffn_down`'s rows are the 96-wide FFN, as llama-quantize
falls back for rows that are not a multiple of 256); an F16 embedding; an untied Q6_K output
head; F32 norms. Across its two layers every block type of llama.cpp's K-quant files appears:
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 and Q8_0; q/k/v and gate/up mix types within a layer.

The `gguf` package quantizes only the 32-weight types, so the K-quant tensors are random
blocks: random bytes whose f16 scale fields (`d`, and `dmin` where the type has minimums) are
set so that each tensor's weights are centred near zero with a standard deviation of
1/sqrt(fan-in). Every bit pattern of the quantized parts is then exercised; the tests compare
Ember's logits with a float32 forward pass over gguf-py's own dequantisation of these blocks.

The tokenizer and chat template are tiny_llama.gguf's (scripts/make_tiny_model.py).

Regenerate with (tests/model/test_kquant_model.py checks that the committed file is what this
script writes):

    python scripts/make_kquant_model.py --out tests/fixtures/tiny_kquant.gguf
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

T = GGMLQuantizationType
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "tests" / "fixtures" / "tiny_kquant.gguf"

N_LAYERS = 2
D_MODEL = 256
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = D_MODEL // N_HEADS
FFN_DIM = 96  # not a multiple of 256: ffn_down takes a 32-weight type, as in llama.cpp's files
CONTEXT = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
SEED = 20261219

# Per layer: (q, k, v, output, gate, up, down).
LAYER_TYPES = [
    (T.Q4_K, T.Q4_K, T.Q6_K, T.Q4_K, T.Q8_0, T.Q5_K, T.Q5_0),
    (T.Q3_K, T.Q2_K, T.Q5_K, T.Q6_K, T.Q2_K, T.Q3_K, T.Q5_1),
]
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
EMBEDDING_TYPE = T.F16
OUTPUT_TYPE = T.Q6_K
QUANTIZED_BY_GGUF = {T.Q5_0, T.Q5_1, T.Q8_0}

# Byte offset of each K-quant's f16 `d`, and of its `dmin` if it has minimums (ggml-common.h).
SCALE_FIELDS: dict[GGMLQuantizationType, tuple[int, int | None]] = {
    T.Q2_K: (80, 82),
    T.Q3_K: (108, None),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208, None),
}
# dmin / d that centres the weights, E[sc * q] / E[m] with sc, m and q uniform over their codes
# and independent: the mean code q (Q2_K: 2-bit, 1.5; Q4_K: 4-bit, 7.5; Q5_K: 5-bit, 15.5).
CENTRING = {T.Q2_K: 1.5, T.Q4_K: 7.5, T.Q5_K: 15.5}

F32 = npt.NDArray[np.float32]


def tiny_model_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tiny_model", HERE / "make_tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_k_blocks(
    rng: np.random.Generator, kind: GGMLQuantizationType, shape: tuple[int, int], std: float
) -> npt.NDArray[np.uint8]:
    """Random blocks of `kind` for a [rows, cols] tensor whose weights have about `std`."""
    rows, cols = shape
    block_weights, block_bytes = GGML_QUANT_SIZES[kind]
    n_blocks = rows * cols // block_weights
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    # Block scales vary around one tensor scale, as a trained tensor's do.
    spread = rng.uniform(0.5, 1.5, n_blocks).astype(np.float32)

    def set_scales(scale: float) -> None:
        d_at, dmin_at = SCALE_FIELDS[kind]
        fields = [(d_at, spread * scale)]
        if dmin_at is not None:
            fields.append((dmin_at, spread * scale * CENTRING[kind]))
        for at, values in fields:
            blocks[:, at : at + 2] = values.astype("<f2").view(np.uint8).reshape(n_blocks, 2)

    set_scales(1.0)
    unit_std = float(gguf.quants.dequantize(blocks, kind).std())
    set_scales(std / unit_std)
    return blocks.reshape(rows, -1)


def tensors(vocab: int) -> dict[str, tuple[npt.NDArray[np.generic], GGMLQuantizationType]]:
    """Every tensor, encoded, with its type; matrices in GGUF's [out, in] (NumPy order)."""
    rng = np.random.default_rng(SEED)
    q_dim, kv_dim = N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM
    shapes = {
        "attn_q": (q_dim, D_MODEL),
        "attn_k": (kv_dim, D_MODEL),
        "attn_v": (kv_dim, D_MODEL),
        "attn_output": (D_MODEL, q_dim),
        "ffn_gate": (FFN_DIM, D_MODEL),
        "ffn_up": (FFN_DIM, D_MODEL),
        "ffn_down": (D_MODEL, FFN_DIM),
    }

    def matrix(kind: GGMLQuantizationType, shape: tuple[int, int]) -> npt.NDArray[np.generic]:
        std = 1.0 / np.sqrt(shape[1])
        if kind in QUANTIZED_BY_GGUF:
            values = (std * rng.standard_normal(shape)).astype(np.float32)
            return gguf.quants.quantize(values, kind)
        return random_k_blocks(rng, kind, shape, std)

    def norm() -> F32:
        return (1.0 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32)

    embedding = rng.standard_normal((vocab, D_MODEL)).astype(np.float16)
    out: dict[str, tuple[npt.NDArray[np.generic], GGMLQuantizationType]] = {
        "token_embd.weight": (embedding, EMBEDDING_TYPE)
    }
    for i, kinds in enumerate(LAYER_TYPES):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (norm(), T.F32)
        out[p + "ffn_norm.weight"] = (norm(), T.F32)
        for name, kind in zip(MATRICES, kinds, strict=True):
            out[f"{p}{name}.weight"] = (matrix(kind, shapes[name]), kind)
    out["output_norm.weight"] = (norm(), T.F32)
    out["output.weight"] = (matrix(OUTPUT_TYPE, (vocab, D_MODEL)), OUTPUT_TYPE)
    return out


def write(path: Path) -> None:
    tiny = tiny_model_script()
    tokens, types, merges, _ = tiny.vocabulary()
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("tiny random llama in K-quants (tests)")
    # What llama-quantize records for the Q4_K_M mix this imitates.
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(FFN_DIM)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_key_value(
        "tokenizer.ggml.token_type", types, GGUFValueType.ARRAY, GGUFValueType.INT32
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tiny.BOS_ID)
    writer.add_eos_token_id(tiny.EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tiny.CHAT_TEMPLATE)
    for name, (data, kind) in tensors(len(tokens)).items():
        writer.add_tensor(name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    write(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
