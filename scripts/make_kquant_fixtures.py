"""Write tests/fixtures/kquant_families/: tiny random-weight models quantised by llama.cpp's own
`llama-quantize` (Q4_K_M, Q5_K_M), with llama.cpp's own logits and greedy tokens beside them.

The models are make_family_fixtures.py's (its tokenizers, chat templates, transformers models
and converter patches), widened so that K-quants apply: d_model 256 and FFN 512, so every row
is whole 256-weight super-blocks (a narrower model falls back to Q5_0/Q8_0), and 4 layers, so
that llama.cpp's `use_more_bits` rule (src/llama-quant.cpp) gives layers 2 and 3 a Q6_K attn_v
and ffn_down beside Q4_K (Q5_K) q/k and gate/up, as real Q4_K_M (Q5_K_M) files have. Each
family is converted to F32 by `convert_hf_to_gguf.py`, then quantised by `llama-quantize`.

Build llama.cpp on the CPU first (llama-cpp-python 0.3.36's vendored tree, from the sdist:
`pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36`; about 15 minutes on 2
cores; shared libraries, as the logits tool below links libllama):

    tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DGGML_NATIVE=OFF \\
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=ON
    cmake --build build -j2 --target llama-quantize

then, from Ember's root:

    HF_HUB_OFFLINE=1 python scripts/make_kquant_fixtures.py \\
        --llama-cpp PATH/llama_cpp_python-0.3.36/vendor/llama.cpp

This compiles scripts/llama_cpp_logits.c against that tree's build/bin/libllama (with `cc`,
the command is in that file) and runs it for llama.cpp's logits: F32 KV cache, flash attention
off, one thread. The models' output heads get a spread of row norms (HEAD_SPREAD, below).
Needs torch, transformers, tokenizers (as make_family_fixtures.py); Ember needs none of them,
nor llama.cpp, at run time.

Per fixture `NAME` (see FIXTURES):
- `NAME.gguf`: the quantised model, with its family's tokenizer and chat template.
- `NAME.npz`: per prompt i, `prompt_i` (ids), `greedy_i` (llama.cpp's 8 greedy tokens, end
  of text not stopping) and `logits_i` (float32, llama.cpp's logits at every position of
  prompt + greedy: the prompt's rows from one batched decode, the rest from single-token
  decodes on its KV cache).
- `NAME.json`: what made it (versions, ftype, prompts) and each tensor's type.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import make_family_fixtures as families
import numpy as np

OUT = families.ROOT / "tests" / "fixtures" / "kquant_families"
LOGITS_TOOL = Path(__file__).resolve().parent / "llama_cpp_logits.c"
SDIST = "llama-cpp-python 0.3.36 (vendored llama.cpp)"
# llama.cpp's matrix products round the activations to 8 bits, which moves these models'
# logits by 6-13 % of a row; a random head's top two logits are closer than that at most
# positions. Output rows scaled by exp(N(0, 1)) make the top token stand out at most positions
# (as a trained model's does), so that greedy choices can be compared.
HEAD_SPREAD = 1.0
WIDE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@dataclass(frozen=True)
class Fixture:
    name: str
    family: families.Family
    ftype: str  # llama-quantize's type name
    seed: int


def _widened(name: str, **config: object) -> families.Family:
    base = next(f for f in families.FAMILIES if f.name == name)
    return families.Family(
        f"{name}-kquant",
        base.hf_class,
        base.tokenizer,
        base.template,
        "f32",  # llama-quantize quantises from float32 weights
        {**base.config, **WIDE, **config},
        matrix_std=1.2 / WIDE["hidden_size"] ** 0.5,
        head_spread=HEAD_SPREAD,
    )


FIXTURES = [
    # Llama 3.1 RoPE scaling (rope_freqs.weight, F32), an untied Q6_K output head.
    Fixture("llama3-q4_k_m", _widened("llama3"), "Q4_K_M", seed=11),
    # q/k RMSNorm and head_dim 128: q is 512 wide over d_model 256, as in real Qwen3; the tied
    # embedding takes the output head's Q6_K.
    Fixture("qwen3-q4_k_m", _widened("qwen3", head_dim=128), "Q4_K_M", seed=12),
    # q/k/v biases (F32) beside Q5_K and Q6_K matrices.
    Fixture("qwen2-q5_k_m", _widened("qwen2"), "Q5_K_M", seed=13),
]


def build_logits_tool(tree: Path, directory: Path) -> Path:
    binary = directory / "llama_cpp_logits"
    lib = tree / "build" / "bin"
    subprocess.run(
        ["cc", "-O2", "-o", str(binary), str(LOGITS_TOOL)]
        + ["-I", str(tree / "include"), "-I", str(tree / "ggml" / "include")]
        + ["-L", str(lib), "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}"],
        check=True,
    )
    return binary


def llama_cpp_logits(
    tool: Path, model: Path, prompts: list[list[int]], n_greedy: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logits at every position of prompt + greedy, greedy ids) per prompt, from llama.cpp."""
    stdin = "".join(" ".join(map(str, p)) + "\n" for p in prompts)
    out = subprocess.run(
        [str(tool), str(model), str(n_greedy)], input=stdin.encode(), capture_output=True
    )
    if out.returncode != 0:
        sys.exit(f"{tool} failed on {model}: {out.stderr.decode()}")
    data, at = out.stdout, 0

    def take(dtype: type, count: int) -> np.ndarray:
        nonlocal at
        values = np.frombuffer(data, dtype, count, at)
        at += values.nbytes
        return values

    results = []
    for prompt in prompts:
        n, vocab = take(np.int32, 2).tolist()
        assert n == len(prompt)
        logits = take(np.float32, n * vocab).reshape(n, vocab)
        greedy = take(np.int32, int(take(np.int32, 1)[0])).copy()
        decoded = take(np.float32, len(greedy) * vocab).reshape(len(greedy), vocab)
        results.append((np.concatenate([logits, decoded]), greedy))
    assert at == len(data), "llama_cpp_logits wrote more than it was asked for"
    return results


def quantize(tree: Path, source: Path, out: Path, ftype: str) -> None:
    quantizer = tree / "build" / "bin" / "llama-quantize"
    subprocess.run(
        [str(quantizer), str(source), str(out), ftype, "1"], check=True, capture_output=True
    )


def record(fixture: Fixture, tree: Path, tool: Path) -> None:
    import torch
    import transformers
    from gguf import GGMLQuantizationType, GGUFReader

    family = fixture.family
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        families.train_bpe(family, directory)
        hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
        families.build_model(family, directory, len(hf_tok), seed=fixture.seed)
        f32 = directory / "model-f32.gguf"
        families.convert(family, directory, tree, f32)
        quantize(tree, f32, OUT / f"{fixture.name}.gguf", fixture.ftype)
    prompts = [hf_tok.encode(t, add_special_tokens=True) for t in families.PROMPTS]
    results = llama_cpp_logits(tool, OUT / f"{fixture.name}.gguf", prompts, GREEDY_TOKENS)
    arrays: dict[str, np.ndarray] = {}
    for i, (prompt, (logits, greedy)) in enumerate(zip(prompts, results, strict=True)):
        # Each greedy token is the argmax of the row before it (the tool's framing is right).
        assert (logits[len(prompt) - 1 : -1].argmax(axis=1) == greedy).all()
        arrays[f"prompt_{i}"] = np.asarray(prompt, np.int32)
        arrays[f"greedy_{i}"] = greedy.astype(np.int32)
        arrays[f"logits_{i}"] = logits
    np.savez_compressed(OUT / f"{fixture.name}.npz", **arrays)
    reader = GGUFReader(OUT / f"{fixture.name}.gguf")
    types = {t.name: GGMLQuantizationType(t.tensor_type).name for t in reader.tensors}
    meta = {
        "fixture": fixture.name,
        "family": family.name,
        "ftype": fixture.ftype,
        "llama_cpp": SDIST,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "prompts": families.PROMPTS,
        "greedy_tokens": GREEDY_TOKENS,
        "tensor_types": types,
    }
    (OUT / f"{fixture.name}.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=1) + "\n", "utf-8"
    )
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    size = (OUT / f"{fixture.name}.gguf").stat().st_size
    print(f"{fixture.name}: {size} bytes, {counts}")


GREEDY_TOKENS = families.GREEDY_TOKENS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    tree = args.llama_cpp.resolve()
    families.TEMPLATES = tree / "models" / "templates"
    OUT.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp())
    try:
        tool = build_logits_tool(tree, build)
        for fixture in FIXTURES:
            if args.only is None or fixture.name in args.only:
                record(fixture, tree, tool)
    finally:
        shutil.rmtree(build)


if __name__ == "__main__":
    main()
