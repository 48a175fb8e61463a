"""llguidance's own Rust copy of our tokenizer (`engine/grammar_tokenizer.py`): for the default
model, the tiny fixture and each byte-level family fixture it encodes as Ember does and gives
byte-identical masks with the Python callback (`TokenizerView`) along JSON documents; where it
would not be exact (user-defined tokens, SentencePiece) it is refused, and those differences are
real; mask workers, which rebuild the tokenizer from a pickle, get it too."""

from __future__ import annotations

import json
import pickle
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from llguidance import LLMatcher, LLTokenizer
from tokenizers import Tokenizer as BackendTokenizer

from ember.engine.grammar import GrammarCompiler
from ember.engine.grammar_tokenizer import (
    callback_lltokenizer,
    first_mismatch,
    native_lltokenizer,
)
from ember.engine.mask_worker import MaskWorker
from ember.engine.structured_output import StructuredOutput
from ember.model.default_model import resolve_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent.parent / "fixtures"
# The structured-output benchmark's schema (scripts/bench_mask_fill.py).
SCHEMA_BODY = Path(__file__).parents[2] / "scripts" / "bench_data" / "json_schema_body.json"

# Byte-level files whose tokenizer llguidance holds exactly.
NATIVE = (
    "tiny_llama.gguf",
    "families/llama3.gguf",
    "families/qwen2.gguf",
    "kquant_families/llama3-q4_k_m.gguf",
    "kquant_families/qwen2-q5_k_m.gguf",
    "kquant_families/qwen3-q4_k_m.gguf",
)
DEFAULT = pytest.param("default", marks=pytest.mark.slow)

CORPUS = (
    '{"items": [{"name": "',
    '"}, {"name": "rake", "count": 1234, "kind": "tool", "fragile": false}]}',
    "0 12 345 6789 1234567890 3.14159 -42 1e10",
    "a  b   c\t\td\n\n\ne \r\n f    ",
    "    indented\n        more\n\t\ttabs",
    "emoji 😀👍🏽 🇫🇷 ❤️ and a ZWJ 👨‍👩‍👧",
    "中文的句子，日本語の文章。한국어 문장",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "if (a != b && c <= d) { x += 1; }",
    "naïve café résumé e\u0301 Å",
    "It's what they'll do, we'd've thought.",
    "",
)
NAMES = ("hammer", "café ☕", "中文 tool", "  spaced  ", "x" * 20, 'quote " and \\')
KINDS = ("tool", "food", "book", "toy")


@cache
def _tokenizer(name: str) -> Tokenizer:
    path = resolve_model_path(None) if name == "default" else FIXTURES / name
    return Tokenizer.from_gguf(GGUFFile.open(path))


@cache
def _lltokenizers(name: str) -> tuple[LLTokenizer, LLTokenizer]:
    """(native, callback)"""
    tokenizer = _tokenizer(name)
    native = native_lltokenizer(tokenizer)
    assert native is not None, f"{name}: llguidance's tokenizer is not exactly ours"
    return native, callback_lltokenizer(tokenizer)


def _spec() -> StructuredOutput:
    body = json.loads(SCHEMA_BODY.read_text())
    return StructuredOutput.json_schema(body["response_format"]["json_schema"]["schema"])


def _document(number: int) -> str:
    items = [
        {
            "name": NAMES[(number + i) % len(NAMES)],
            "count": (number * 37 + i * 1111) % 9999,
            "kind": KINDS[(number + i) % 4],
            "fragile": (number + i) % 2 == 0,
        }
        for i in range(6)
    ]
    return json.dumps({"items": items}, ensure_ascii=False)


@pytest.mark.parametrize("name", [DEFAULT, *NATIVE])
def test_the_json_from_the_gguf_encodes_as_ember_does(name: str) -> None:
    tokenizer = _tokenizer(name)
    rebuilt = BackendTokenizer.from_str(tokenizer.to_json())
    native, _ = _lltokenizers(name)
    texts = [*CORPUS, *map(_document, range(4))]
    for text in texts:
        ours = tokenizer.encode(text)
        assert rebuilt.encode(text, add_special_tokens=False).ids == ours, text
        assert native.tokenize_str(text) == ours, text


@pytest.mark.parametrize("name", [DEFAULT, *NATIVE])
def test_masks_are_the_callbacks_byte_for_byte_along_documents(name: str) -> None:
    tokenizer = _tokenizer(name)
    grammar = _spec().grammar()
    for number in range(3):
        ids = tokenizer.encode(_document(number))
        native, callback = (LLMatcher(t, grammar, log_level=0) for t in _lltokenizers(name))
        for step, token in enumerate([*ids, None]):
            theirs, ours = native.compute_bitmask(), callback.compute_bitmask()
            assert theirs == ours, f"{name}: document {number}, step {step}"
            if token is not None:
                assert native.consume_token(token) and callback.consume_token(token)
        assert native.is_accepting() and callback.is_accepting()


def test_user_defined_tokens_keep_the_callback() -> None:
    # Qwen3's <think>, <tool_call> ... are text to us, special to llguidance's own copy.
    tokenizer = _tokenizer("families/qwen3.gguf")
    assert native_lltokenizer(tokenizer) is None
    forced = LLTokenizer(tokenizer.to_json(), n_vocab=tokenizer.vocab_size)
    mismatch = first_mismatch(forced, tokenizer)
    assert mismatch is not None and tokenizer.token_bytes(mismatch) == b"<think>"
    assert first_mismatch(callback_lltokenizer(tokenizer), tokenizer) is None


def test_sentencepiece_keeps_the_callback() -> None:
    # llguidance drops SentencePiece's Prepend("▁") from the normalizer: not our encoder.
    tokenizer = _tokenizer("families/mistral.gguf")
    assert native_lltokenizer(tokenizer) is None
    forced = LLTokenizer(tokenizer.to_json(), n_vocab=tokenizer.vocab_size)
    assert forced.tokenize_str("hello world") != tokenizer.encode("hello world")


def test_a_compiler_and_a_mask_worker_use_the_native_tokenizer() -> None:
    tokenizer = _tokenizer("tiny_llama.gguf")
    compiler = GrammarCompiler(tokenizer)
    compiler.lltokenizer()
    assert compiler.native_tokenizer is True
    fallback = GrammarCompiler(_tokenizer("families/mistral.gguf"))
    fallback.lltokenizer()
    assert fallback.native_tokenizer is False
    # A worker rebuilds the engine's tokenizer from a pickle (engine/mask_workers.py).
    pickled = pickle.loads(pickle.dumps(tokenizer, protocol=pickle.HIGHEST_PROTOCOL))
    worker = MaskWorker(pickled, np.zeros((1, compiler.tokenizer_words), np.int32))
    worker.warm()
    assert worker.native_tokenizer is True
    worker.close()
