"""Write tests/fixtures/tokenizer_golden.json: reference token ids and chat renderings.

    HF_HUB_OFFLINE=1 python scripts/make_tokenizer_fixtures.py

Needs transformers and torch (the tests that read the fixture need neither). Three references
are computed for the default model and checked against each other:

1. transformers' tokenizer built from the GGUF (`AutoTokenizer.from_pretrained(dir,
   gguf_file=...)`). Its converter knows no 'smollm' pre-tokenizer and falls back to plain
   GPT-2 splitting, which differs from the real SmolLM2 tokenizer where whitespace runs meet
   digits ("  1"); its ids are stored as `transformers_gguf_ids` where they differ.
2. The SmolLM2 tokenizer as published: the same vocabulary and merges with the pre-tokenizer
   of HuggingFaceTB/SmolLM2's tokenizer.json (Digits(individual_digits) + ByteLevel). These
   are the expected `ids`.
3. An independent pure-Python byte-level BPE following llama.cpp's 'smollm' rules (split
   `\\p{N}`, then GPT-2's regex, then merges by rank), which must agree with (2) exactly.

Chat renderings come from transformers' `apply_chat_template`.
"""

from __future__ import annotations

import json
import os
import sys
from itertools import pairwise
from pathlib import Path

import gguf
import regex
from tokenizers import pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "fixtures" / "tokenizer_golden.json"

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "a     b",
    "tabs\tand\t\tmore\ttabs",
    "line one\nline two\n\nline four\r\nwindows line",
    "\n\n\n",
    " \n \t \n",
    "1234567",
    "  1",
    "a  123 b   4567",
    "x\t\t42",
    "Pi is 3.14159, e is 2.71828; $1,000,000.00 and 50% off!",
    "Version 2.0.1-rc3 (build #20240917)",
    "I'm sure they'll say we've done what you'd've done. It's JOHN'S!",
    "Café, naïve, résumé, Ångström, Straße, Ελληνικά, кириллица.",
    "你好，世界！日本語のテキストです。한국어 텍스트.",
    "Emoji: 😀 👍🏽 ❤️ 🇫🇷",
    "Family 👨‍👩‍👧‍👦 and flag 🏳️‍🌈 and 🧑🏿‍💻",
    "Superscript x² + y³, fractions ½ ¾, full-width １２３, Roman Ⅻ",
    "Math: ∑ ∫ √ ≠ ≤ ≥ ∞ → ←",
    "Arabic مرحبا بالعالم and Hebrew שלום עולם",
    "Hindi नमस्ते दुनिया",
    "zero\u200bwidth and non\u00a0breaking",
    "Punctuation!!! ??? ... --- *** ### @@@ ((( ))) [[]] {{}} <> ~ ` ^ | \\ /",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside and <repo_name> too",
    "broken <|im_start| marker and <|im_end",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    "class Foo:\n\tdef __init__(self):\n\t\tself.x = {'a': [1, 2, 3]}  # comment\n",
    'print(f"{value!r:>10}")  \n\n# TODO: fix   spacing',
    "SmolLM2 is a family of compact language models available in three sizes: 135M, 360M, "
    "and 1.7B parameters. They are capable of solving a wide range of tasks while being "
    "lightweight enough to run on-device.",
]

CONVERSATIONS: list[tuple[list[dict[str, str]], bool]] = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    (
        [
            {"role": "system", "content": "You are a terse assistant. Answer in one word."},
            {"role": "user", "content": "Largest planet?"},
            {"role": "assistant", "content": "Jupiter."},
            {"role": "user", "content": "And the smallest? 🪐"},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "Write a haiku.\n\nAbout  spaces."},
            {"role": "assistant", "content": "Gaps between the words\nsilence\tshaped like tabs"},
        ],
        False,
    ),
]

_GPT2_SPLIT = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)


def _byte_chars() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class ReferenceBPE:
    """Byte-level BPE written from llama.cpp's description, sharing no code with `tokenizers`."""

    def __init__(self, tokens: list[str], token_types: list[int], merges: list[str]) -> None:
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): rank for rank, m in enumerate(merges)}
        self.byte_chars = _byte_chars()
        control = [t for t, k in zip(tokens, token_types, strict=True) if k == 3]
        specials = sorted(control, key=len, reverse=True)
        self.special_split = regex.compile("(" + "|".join(map(regex.escape, specials)) + ")")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self.special_split.split(text)):
            if i % 2:
                ids.append(self.ids[part])
                continue
            # llama.cpp applies its regexes in turn: every \p{N} becomes a piece of its own,
            # and GPT-2's regex then splits the text between them.
            for chunk in regex.split(r"(\p{N})", part):
                for piece in _GPT2_SPLIT.findall(chunk):
                    ids.extend(self._bpe(piece))
        return ids

    def _bpe(self, piece: str) -> list[int]:
        word = [self.byte_chars[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(pairwise(word))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            word[i : i + 2] = [word[i] + word[i + 1]]
        return [self.ids[w] for w in word]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from ember.model.default_model import default_model_path

    path = default_model_path()
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    reference = ReferenceBPE(
        fields["tokenizer.ggml.tokens"],
        fields["tokenizer.ggml.token_type"],
        fields["tokenizer.ggml.merges"],
    )

    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    gguf_ids = [hf.encode(text, add_special_tokens=False) for text in TEXTS]
    # SmolLM2's published tokenizer.json: {"type": "Sequence", "pretokenizers": [{"type":
    # "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false,
    # "trim_offsets": true, "use_regex": true}]}
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )

    texts = []
    for text, from_gguf in zip(TEXTS, gguf_ids, strict=True):
        ids = hf.encode(text, add_special_tokens=False)
        independent = reference.encode(text)
        if ids != independent:
            print(f"reference BPE disagrees on {text!r}:\n  {ids}\n  {independent}")
            return 1
        entry: dict[str, object] = {"text": text, "ids": ids}
        if from_gguf != ids:
            entry["transformers_gguf_ids"] = from_gguf
        texts.append(entry)

    chats = [
        {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "rendered": hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            ),
        }
        for messages, add_generation_prompt in CONVERSATIONS
    ]
    golden = {
        "model": path.name,
        "generated_by": "scripts/make_tokenizer_fixtures.py",
        "special_tokens": {
            "bos": [hf.bos_token, hf.bos_token_id],
            "eos": [hf.eos_token, hf.eos_token_id],
            "unk": [hf.unk_token, hf.unk_token_id],
            "pad": [hf.pad_token, hf.pad_token_id],
            "all": sorted(hf.all_special_tokens),
        },
        "texts": texts,
        "chats": chats,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    differ = sum("transformers_gguf_ids" in t for t in texts)
    print(f"wrote {OUTPUT} ({len(texts)} texts, {differ} differ from transformers' GGUF tokenizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
