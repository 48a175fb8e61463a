"""Tokenizers and chat templates of the architecture families, from their GGUF files.

Reference ids (tests/fixtures/families/NAME.json, scripts/make_family_fixtures.py) come from an
independent tokenizer of the same vocabulary: the `tokenizers` library on the tokenizer.json
definition the family publishes (Llama 3's `llama-bpe`, Qwen2's `qwen2` with NFC), or
sentencepiece itself for the SentencePiece `llama` model. Renderings come from transformers'
`apply_chat_template` with the families' real templates.
"""

from __future__ import annotations

import json
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ember.errors import ModelFormatError
from ember.model.chat_template import ChatTemplate
from ember.model.gguf_file import GGUFFile
from ember.model.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "families"
FAMILIES = ("llama3", "qwen2", "qwen3", "mistral")


@cache
def _gguf(name: str) -> GGUFFile:
    return GGUFFile.open(FIXTURES / f"{name}.gguf")


@cache
def _tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_gguf(_gguf(name))


@cache
def _golden(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    return loaded


def _cases() -> list[tuple[str, str, list[int]]]:
    return [
        (name, entry["text"], entry["ids"]) for name in FAMILIES for entry in _golden(name)["texts"]
    ]


@pytest.mark.parametrize(
    ("name", "text", "ids"), _cases(), ids=lambda v: repr(v[:16]) if isinstance(v, str) else ""
)
def test_ids_match_the_reference_tokenizer(name: str, text: str, ids: list[int]) -> None:
    assert _tokenizer(name).encode(text) == ids


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_decode_and_token_bytes_agree(name: str) -> None:
    tokenizer = _tokenizer(name)
    golden = _golden(name)["texts"]
    texts = [entry["text"] for entry in golden]
    assert tokenizer.encode_batch(texts) == [entry["ids"] for entry in golden]
    # SentencePiece writes the dummy prefix as a space in front; Qwen2 normalizes to NFC.
    prefix = " " if _gguf(name).get("tokenizer.ggml.model") == "llama" else ""
    for entry in golden:
        text = (
            unicodedata.normalize("NFC", entry["text"])
            if name.startswith("qwen")
            else entry["text"]
        )
        assert tokenizer.decode(entry["ids"]) == text
        streamed = b"".join(tokenizer.token_bytes(i) for i in entry["ids"])
        assert streamed == (prefix + text).encode("utf-8")


def test_special_ids_and_bos_follow_the_files() -> None:
    llama3, qwen2, qwen3, mistral = (_tokenizer(n) for n in FAMILIES)
    assert llama3.add_bos and llama3.bos_text == "<|begin_of_text|>"
    assert llama3.encode("hi", add_special_tokens=True)[0] == llama3.bos_id
    assert {llama3.token_text(i) for i in llama3.stop_ids} >= {"<|eot_id|>", "<|end_of_text|>"}
    assert not qwen2.add_bos and qwen2.eos_text == "<|im_end|>"
    assert {qwen2.token_text(i) for i in qwen2.stop_ids} >= {"<|im_end|>", "<|endoftext|>"}
    assert mistral.add_bos and mistral.bos_text == "<s>" and mistral.eos_text == "</s>"
    # Qwen3's <think> is an added token, not a special one: one id, kept on decode.
    think = qwen3.encode("<think>")
    assert len(think) == 1 and not qwen3.is_special(think[0]) and qwen3.is_added(think[0])
    assert qwen3.decode(qwen3.encode("<think>\nhm</think>")) == "<think>\nhm</think>"


def test_sentencepiece_prefixes_a_space_after_a_special_token() -> None:
    """As llama.cpp does: the text after a control token starts a new SentencePiece run."""
    tokenizer = _tokenizer("mistral")
    hello = next(e["ids"] for e in _golden("mistral")["texts"] if e["text"] == "Hello, world!")
    inst = tokenizer.encode("[INST]")
    assert len(inst) == 1 and tokenizer.is_special(inst[0])
    assert tokenizer.encode("[INST]Hello, world!") == inst + hello
    # Typed by a user, the marker is plain text.
    typed = tokenizer.encode("[INST]Hello, world!", plain_spans=[(0, 6)])
    assert inst[0] not in typed and tokenizer.decode(typed) == "[INST]Hello, world!"


@pytest.mark.parametrize("name", FAMILIES)
def test_chat_template_renders_as_transformers(name: str) -> None:
    golden = _golden(name)
    template = ChatTemplate.from_gguf(_gguf(name))
    conversation = golden["conversation"]
    assert conversation[0]["role"] == "system"
    assert template.render(conversation, add_generation_prompt=True) == golden["rendered"]["True"]
    assert template.render(conversation, add_generation_prompt=False) == golden["rendered"]["False"]


@pytest.mark.parametrize("name", FAMILIES)
def test_chat_prompt_ids_match_transformers(name: str) -> None:
    golden = _golden(name)
    template = ChatTemplate.from_gguf(_gguf(name))
    ids = template.encode(golden["conversation"], _tokenizer(name))
    assert ids == golden["rendered_ids"]


def test_unknown_pre_tokenizer_of_a_family_file_is_refused() -> None:
    metadata = {**_gguf("qwen2").metadata, "tokenizer.ggml.pre": "qwen9"}
    with pytest.raises(ModelFormatError, match="unsupported pre-tokenizer 'qwen9'"):
        Tokenizer.from_metadata(metadata, source="qwen9.gguf")


def test_sentencepiece_without_scores_or_byte_tokens_is_refused() -> None:
    metadata = dict(_gguf("mistral").metadata)
    del metadata["tokenizer.ggml.scores"]
    with pytest.raises(ModelFormatError, match=r"m\.gguf: tokenizer\.ggml\.scores is missing"):
        Tokenizer.from_metadata(metadata, source="m.gguf")
    metadata = dict(_gguf("mistral").metadata)
    tokens = list(metadata["tokenizer.ggml.tokens"])  # type: ignore[call-overload]
    metadata["tokenizer.ggml.tokens"] = [t.replace("<0x41>", "A!") for t in tokens]
    with pytest.raises(ModelFormatError, match=r"no <0x00>\.\.<0xFF> byte tokens"):
        Tokenizer.from_metadata(metadata, source="m.gguf")
