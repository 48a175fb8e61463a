"""Write tests/fixtures/tiny_llama.gguf: a Llama of a few tens of KB that the real loader loads.

The engine's tests run on it in milliseconds instead of seconds on the default model. It has
random weights of a tiny Llama shape (2 layers, d_model 32, grouped-query attention) and a real
byte-level BPE tokenizer: the 256 byte tokens, merges learned here from a small English and
code corpus, and the ChatML special tokens and chat template of the default model's family.

Two properties make it a good subject for invariance tests (batched = alone, preemption,
prefix cache, async = sync), and the tests rely on them:

- Greedy continuations depend on the whole context: attention is sharp (query and key weights
  scaled up) and the residual stream is not dominated by the last token's embedding (the
  output head is untied), so a wrong position, KV slot or block table changes the tokens.
- The model writes printable ASCII only, and never ends by itself: dimension 0 of the
  residual stream holds a constant no layer writes to, so after the final RMSNorm it is always
  positive, and the head's rows for the other tokens (control bytes, bytes >= 0x80, the
  special tokens) read it with a large negative weight. Text is then readable for stop-string
  tests, and a request runs to max_tokens unless a test asks it to stop.

Regenerate with (tests/test_tiny_model_fixture.py checks that the committed file is what this
script writes):

    python scripts/make_tiny_model.py --out tests/fixtures/tiny_llama.gguf
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFValueType
from tokenizers import pre_tokenizers

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_llama.gguf"

N_LAYERS = 2
D_MODEL = 32
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = D_MODEL // N_HEADS
FFN_DIM = 48
CONTEXT = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
SEED = 20261207

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_ID, EOS_ID = 1, 2  # as in SmolLM2: <|im_start|> and <|im_end|>
N_MERGES = 61  # 3 special + 256 bytes + 61 merges = a vocabulary of 320
QK_GAIN = 2.5  # attention scores with a std of ~2.5 instead of ~1: sharp, position-sensitive
LOGIT_GAIN = 0.5  # logits with a std of ~3
BARRED_WEIGHT = -20.0  # head weight on the constant dimension for tokens the model never writes

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """\
The capital of France is Paris, and the capital of Italy is Rome.
Once upon a time, in a small village at the edge of a great forest, there lived an old
woodcutter who had three sons. The eldest was strong, the second was clever, and the youngest
was kind. Every morning they went into the forest together and came back in the evening.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
1, 2, 3, 4, 5, 6, 7, 8, 9, 10
Water boils at 100 degrees and freezes at 0 degrees.
You are a helpful assistant. Name a color. Name a fruit. The sky is blue and the grass is green.
"""


def gpt2_byte_alphabet() -> list[str]:
    """GPT-2's `bytes_to_unicode`: the character each byte is written as, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = 0
    chars = []
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges, most frequent pair first (ties: the smaller pair)."""
    # The default model's pre-tokenizer ('smollm' in tokenizer.ggml.pre): digits apart, then
    # GPT-2's split, in the byte alphabet.
    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    words = Counter(tuple(piece) for piece, _ in split.pre_tokenize_str(text))
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def vocabulary() -> tuple[list[str], list[int], list[str], list[bool]]:
    """Tokens, their llama.cpp types, the merges, and which tokens the model may write."""
    alphabet = gpt2_byte_alphabet()
    byte_of = {ch: b for b, ch in enumerate(alphabet)}
    merges = learn_merges(CORPUS, N_MERGES)
    tokens = [*SPECIAL, *alphabet, *(a + b for a, b in merges)]
    types = [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))

    def writable(token: str) -> bool:
        return all(0x20 <= byte_of[ch] < 0x7F or byte_of[ch] == 0x0A for ch in token)

    allowed = [False] * len(SPECIAL) + [writable(t) for t in tokens[len(SPECIAL) :]]
    return tokens, types, [f"{a} {b}" for a, b in merges], allowed


F32 = npt.NDArray[np.float32]


def weights(vocab: int, allowed: list[bool]) -> dict[str, F32]:
    """Every tensor in NumPy order ([out, in] for matrices, as GGUF stores them)."""
    rng = np.random.default_rng(SEED)
    q_dim, kv_dim = N_HEADS * HEAD_DIM, N_KV_HEADS * HEAD_DIM

    def mat(n_out: int, n_in: int, gain: float = 1.0) -> F32:
        m: F32 = (gain * rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        return m

    def norm() -> F32:
        return (1.0 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32)

    def writes_residual(m: F32) -> F32:
        m[0] = 0.0  # dimension 0 stays the embedding's constant
        return m

    embd = rng.standard_normal((vocab, D_MODEL)).astype(np.float32)
    embd[:, 0] = 1.0
    tensors: dict[str, F32] = {"token_embd.weight": embd}
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = norm()
        tensors[p + "attn_q.weight"] = mat(q_dim, D_MODEL, QK_GAIN)
        tensors[p + "attn_k.weight"] = mat(kv_dim, D_MODEL, QK_GAIN)
        tensors[p + "attn_v.weight"] = mat(kv_dim, D_MODEL)
        tensors[p + "attn_output.weight"] = writes_residual(mat(D_MODEL, q_dim))
        tensors[p + "ffn_norm.weight"] = norm()
        tensors[p + "ffn_gate.weight"] = mat(FFN_DIM, D_MODEL)
        tensors[p + "ffn_up.weight"] = mat(FFN_DIM, D_MODEL)
        tensors[p + "ffn_down.weight"] = writes_residual(mat(D_MODEL, FFN_DIM))
    output_norm = norm()
    output_norm[0] = 1.0
    head = (LOGIT_GAIN * rng.standard_normal((vocab, D_MODEL))).astype(np.float32)
    head[:, 0] = 0.0
    barred = ~np.asarray(allowed)
    head[barred] = 0.0
    head[barred, 0] = BARRED_WEIGHT
    tensors["output_norm.weight"] = output_norm
    tensors["output.weight"] = head
    return tensors


def encoded(name: str, values: F32) -> tuple[npt.NDArray[np.generic], GGMLQuantizationType]:
    """Norms in F32, the embedding and head in Q8_0, the layers' matrices in F16."""
    if values.ndim == 1:
        return values, GGMLQuantizationType.F32
    if name in ("token_embd.weight", "output.weight"):
        kind = GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(values, kind), kind
    return values.astype(np.float16), GGMLQuantizationType.F16


def write(path: Path) -> None:
    tokens, types, merges, allowed = vocabulary()
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("tiny random llama (tests)")
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
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, values in weights(len(tokens), allowed).items():
        data, kind = encoded(name, values)
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
