"""Write tests/fixtures/families/: one tiny random-weight model per architecture family, as
llama.cpp's own converter writes it, with transformers' logits and tokenizer ids beside it.

    HF_HUB_OFFLINE=1 python scripts/make_family_fixtures.py \\
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp

`--llama-cpp` is the llama.cpp tree vendored in the llama-cpp-python sdist
(`pip download --no-binary :all: --no-deps llama-cpp-python`): its `convert_hf_to_gguf.py`
(with its own `gguf-py`) converts, and its `models/templates/` give the real chat templates.
Needs torch, transformers, tokenizers and sentencepiece; Ember needs none of them at run time.
Nothing is downloaded: tokenizers are trained here on a small corpus, weights are random.

Per family `NAME` (see FAMILIES):
- `NAME.gguf`: 2 layers, d_model 64, a real tokenizer of ~500 tokens, its chat template.
- `NAME.npz`: `prompt_i` ids, `logits_i` (every position, float32) from transformers'
  eager forward pass on the same weights (rounded to float16 first for F16 files, so both
  sides compute with the same numbers), and `greedy_i`, its next 8 greedy tokens.
- `NAME.json`: token ids of TEXTS from an independent tokenizer (the `tokenizers` library
  on the tokenizer.json definition the family publishes, or sentencepiece itself for the
  SentencePiece model), and chat renderings from transformers' `apply_chat_template`.

Two facts the converter cannot know about a freshly trained tokenizer are passed to it by
patching, not by editing its output: the pre-tokenizer name (it recognises published
vocabularies by a hash of their ids) and, for the sliding-window fixture, the window
(llama.cpp's `llama` converter drops Mistral's `sliding_window`; we write the GGUF key
`llama.attention.sliding_window` that llama.cpp defines for it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "families"

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "   three leading spaces and trailing   ",
    "a     b\t\tc\n\n\nd \n \t \n",
    "line one\nline two\r\nwindows line",
    "1234567 and 3.14159, $1,000,000.00, 50% off",
    "  1 a  123 b   4567 x\t\t42",
    "I'm sure they'll say we've done what you'd've done. It's JOHN'S!",
    "Café, naïve, résumé, Ångström, Straße, Ελληνικά, кириллица.",
    "cafe\u0301 vs café",
    "你好，世界！日本語のテキストです。한국어 텍스트.",
    "Emoji: 😀 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    'print(f"{value!r:>10}")  \n\n# TODO: fix   spacing',
    "Punctuation!!! ??? ... --- *** ### @@@ ((( ))) [[]] {{}} <> ~ ` ^ | \\ /",
]

CORPUS = (
    TEXTS
    + [
        "Language models read text as tokens. A tokenizer splits the text into pieces, and the "
        "model predicts the next piece from the ones before it. The quick brown fox jumps over "
        "the lazy dog again and again, while the dog sleeps in the sun.",
        "for i in range(10):\n    print(i * i)\nreturn value\nclass Model:\n"
        "    def forward(self, x):\n"
        "        return self.layer(x)\n",
        "What is the capital of France? The capital of France is Paris. You are a helpful "
        "assistant. Answer the question in one sentence. Hello! How are you today?",
        "数字 123 和 456，中文文本，世界你好。日本語とテキスト。",
        "The year 2024 had 366 days; 1,000 people came at 10:30 on 2024-09-17.",
    ]
    * 3
)

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3? Answer in one word."},
]

PROMPTS = [
    "Hello, world! The quick brown fox",
    "def fib(n):\n    return n",
    "你好，世界 1234 😀",
]

# Split regexes as the families' published tokenizer.json files spell them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    name: str
    hf_class: str  # transformers config / model class prefix (LlamaConfig, ...)
    tokenizer: str  # "llama-bpe", "qwen2" (byte-level BPE) or "spm" (SentencePiece)
    template: str  # file under llama.cpp's models/templates/
    outtype: str  # convert_hf_to_gguf.py --outtype
    config: dict[str, Any] = field(default_factory=dict)
    # Std of the random matrices: 1.2 / sqrt(d_model) keeps attention scores and logits of
    # the same spread at any width (0.15 at d_model 64).
    matrix_std: float = 0.15
    # Output-head rows scaled by exp(head_spread * N(0, 1)): a few tokens' logits stand out,
    # as a trained model's top token does, instead of a random head's near ties (0: off).
    head_spread: float = 0.0


FAMILIES = [
    Family(
        "llama3",
        "Llama",
        "llama-bpe",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "f16",
        {
            "rope_theta": 500000.0,
            # original_max_position_embeddings 64 puts the 8 frequencies of head dim 16 on
            # every branch of Llama 3's scaling (unscaled, smoothed, divided by the factor).
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "tie_word_embeddings": False,
        },
    ),
    Family(
        "qwen2",
        "Qwen2",
        "qwen2",
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        "f32",
        {"rope_theta": 1000000.0, "tie_word_embeddings": True},
    ),
    Family(
        "qwen3",
        "Qwen3",
        "qwen2",
        "Qwen-Qwen3-0.6B.jinja",
        "f16",
        # head_dim 32 with 4 heads: q is 128 wide over a d_model of 64, as in real Qwen3.
        {"rope_theta": 1000000.0, "head_dim": 32, "tie_word_embeddings": True},
    ),
    Family(
        "mistral",
        "Mistral",
        "spm",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "f32",
        {"rope_theta": 1000000.0, "sliding_window": 5, "tie_word_embeddings": False},
    ),
]

SPECIALS = {
    "llama-bpe": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
    ],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
# Added but not special: matched whole, decoded as text (Qwen3's thinking markers).
USER_DEFINED = {"qwen3": ["<think>", "</think>", "<tool_call>", "</tool_call>"]}


def train_bpe(family: Family, directory: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    is_llama3 = family.tokenizer == "llama-bpe"
    tok = Tokenizer(models.BPE(ignore_merges=is_llama3))
    split = LLAMA3_SPLIT if is_llama3 else QWEN2_SPLIT
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    if not is_llama3:
        tok.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS[family.tokenizer]
    trainer = BpeTrainer(
        vocab_size=480,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    user = USER_DEFINED.get(family.name, [])
    if user:
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    tok.save(str(directory / "tokenizer.json"))
    if is_llama3:
        bos, eos = "<|begin_of_text|>", "<|eot_id|>"
    else:
        bos, eos = None, "<|im_end|>"
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": None if is_llama3 else "<|endoftext|>",
        "add_bos_token": is_llama3,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": family_template(family),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))


def train_spm(family: Family, directory: Path) -> None:
    import sentencepiece as spm

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in CORPUS), "utf-8")
    # Llama 2 / Mistral's trainer options that change encoding: BPE, byte fallback, digits
    # split, a dummy prefix, whitespace kept as is (identity normalization).
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tokenizer"),
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        control_symbols=["[INST]", "[/INST]"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "chat_template": family_template(family),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))


TEMPLATES: Path = Path()


def family_template(family: Family) -> str:
    return (TEMPLATES / family.template).read_text("utf-8")


def reference_ids(family: Family, directory: Path) -> list[list[int]]:
    if family.tokenizer == "spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        return [list(sp.encode(t)) for t in TEXTS]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]


def build_model(family: Family, directory: Path, vocab_size: int, seed: int) -> Any:
    import torch
    import transformers

    config_class = getattr(transformers, f"{family.hf_class}Config")
    model_class = getattr(transformers, f"{family.hf_class}ForCausalLM")
    settings = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1 if family.tokenizer == "spm" else None,
        "eos_token_id": 2 if family.tokenizer == "spm" else None,
        **family.config,
    }
    config = config_class(**settings)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            # Larger than the default init (std 0.02), so that logits differ between tokens and
            # positions; norms and biases random too, so a dropped one would show.
            param.copy_(torch.randn_like(param) * (0.5 if param.dim() == 1 else family.matrix_std))
            if param.dim() == 1 and "norm" in _name_of(model, param):
                param.add_(1.0)
            if family.outtype == "f16":
                param.copy_(param.half().float())
        if family.head_spread:
            head = model.get_output_embeddings().weight  # the embedding too when tied
            head.mul_(torch.exp(family.head_spread * torch.randn(head.shape[0], 1)))
            if family.outtype == "f16":
                head.copy_(head.half().float())
    model.save_pretrained(directory, safe_serialization=True)
    return model


def _name_of(model: Any, param: Any) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


_CONVERT = """
import runpy, sys
tree, pre, window, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
sys.path.insert(0, tree)
import conversion.base as base
import conversion.llama as llama
if pre:
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
if window:
    original = llama.LlamaModel.set_gguf_parameters
    def set_gguf_parameters(self):
        original(self)
        self.gguf_writer.add_sliding_window(window)
    llama.LlamaModel.set_gguf_parameters = set_gguf_parameters
sys.argv = [tree + "/convert_hf_to_gguf.py", *argv]
runpy.run_path(tree + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def convert(family: Family, directory: Path, tree: Path, out: Path) -> None:
    pre = "" if family.tokenizer == "spm" else family.tokenizer
    window = int(family.config.get("sliding_window") or 0)
    argv = [str(directory), "--outfile", str(out), "--outtype", family.outtype]
    argv += ["--model-name", f"tiny-{family.name}"]  # else the temporary directory's name
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", _CONVERT, str(tree), pre, str(window), *argv],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def record(family: Family, tree: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if family.tokenizer == "spm":
            train_spm(family, directory)
        else:
            train_bpe(family, directory)
        hf_tok = AutoTokenizer.from_pretrained(directory)
        ids = reference_ids(family, directory)
        hf_ids = [hf_tok.encode(t, add_special_tokens=False) for t in TEXTS]
        # transformers' own tokenizer must agree with the independent reference.
        mismatched = [t for t, a, b in zip(TEXTS, ids, hf_ids, strict=True) if a != b]
        vocab_size = len(hf_tok)
        model = build_model(family, directory, vocab_size, seed=len(family.name))
        convert(family, directory, tree, OUT / f"{family.name}.gguf")
        arrays: dict[str, np.ndarray] = {}
        for i, text in enumerate(PROMPTS):
            prompt = hf_tok.encode(text, add_special_tokens=True)
            with torch.no_grad():
                logits = model(torch.tensor([prompt])).logits[0].float().numpy()
            arrays[f"prompt_{i}"] = np.asarray(prompt, np.int32)
            arrays[f"logits_{i}"] = logits.astype(np.float32)
            arrays[f"greedy_{i}"] = np.asarray(greedy(model, prompt, GREEDY_TOKENS), np.int32)
        np.savez_compressed(OUT / f"{family.name}.npz", **arrays)
        rendered = {
            str(gen): hf_tok.apply_chat_template(
                CONVERSATION, tokenize=False, add_generation_prompt=gen
            )
            for gen in (True, False)
        }
        import transformers

        meta = {
            "family": family.name,
            "tokenizer": family.tokenizer,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
            "texts": [{"text": t, "ids": i} for t, i in zip(TEXTS, ids, strict=True)],
            "transformers_mismatches": mismatched,
            "conversation": CONVERSATION,
            "rendered": rendered,
            "rendered_ids": hf_tok.apply_chat_template(
                CONVERSATION, tokenize=True, add_generation_prompt=True
            ),
        }
        (OUT / f"{family.name}.json").write_text(
            json.dumps(meta, ensure_ascii=False, indent=1, default=_plain) + "\n", "utf-8"
        )
        print(
            f"{family.name}: vocab {vocab_size}, {(OUT / f'{family.name}.gguf').stat().st_size}"
            f" bytes, tokenizer mismatches vs transformers: {len(mismatched)}"
        )


GREEDY_TOKENS = 8


def greedy(model: Any, prompt: list[int], count: int) -> list[int]:
    """`count` greedy tokens (end of text not stopping), each from a full forward pass."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(count):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(logits, 2).values
            # A near tie could go either way in another implementation's rounding.
            assert float(top2[0] - top2[1]) > 1e-3, "greedy choice too close to call"
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt) :]


def _plain(value: Any) -> Any:
    if hasattr(value, "input_ids"):
        return list(value["input_ids"])
    return list(value)


def main() -> None:
    global TEMPLATES
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    TEMPLATES = args.llama_cpp / "models" / "templates"
    OUT.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        if args.only is None or family.name in args.only:
            record(family, args.llama_cpp.resolve())


if __name__ == "__main__":
    main()
