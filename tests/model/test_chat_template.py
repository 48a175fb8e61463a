"""Chat rendering against transformers' `apply_chat_template`, and its error cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidRequestError, ModelFormatError
from ember.model.chat_template import ChatTemplate

from .default_metadata import default_tokenizer_metadata

GOLDEN = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "tokenizer_golden.json").read_text("utf-8")
)
CHATS: list[dict[str, Any]] = GOLDEN["chats"]


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate.from_metadata(default_tokenizer_metadata(), source="default model")


def _template(text: str) -> ChatTemplate:
    return ChatTemplate.from_metadata({"tokenizer.chat_template": text}, source="m.gguf")


@pytest.mark.parametrize("chat", CHATS, ids=lambda chat: f"{len(chat['messages'])}-messages")
def test_rendering_matches_hugging_face(template: ChatTemplate, chat: dict[str, Any]) -> None:
    rendered = template.render(
        chat["messages"], add_generation_prompt=chat["add_generation_prompt"]
    )
    assert rendered == chat["rendered"]


def test_generation_prompt_is_appended(template: ChatTemplate) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with_prompt = template.render(messages)
    assert with_prompt == template.render(messages, add_generation_prompt=False) + (
        "<|im_start|>assistant\n"
    )


def test_special_token_variables_come_from_the_file() -> None:
    text = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}"
    metadata = {**default_tokenizer_metadata(), "tokenizer.chat_template": text}
    rendered = ChatTemplate.from_metadata(metadata).render([{"role": "user", "content": "x"}])
    assert rendered == "<|im_start|>|<|im_end|>|<|endoftext|>|<|im_end|>"


def test_hugging_face_environment() -> None:
    text = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "{{ m | tojson }}\n"
        "{% endfor %}"
    )
    rendered = _template(text).render(
        [{"role": "skip", "content": "no"}, {"role": "user", "content": "<é>"}]
    )
    # trim_blocks/lstrip_blocks drop the tag lines; tojson neither escapes HTML nor non-ASCII.
    assert rendered == '{"role": "user", "content": "<é>"}\n'


def test_template_raise_exception_is_an_invalid_request() -> None:
    text = "{% if messages[0].role != 'system' %}{{ raise_exception('system first!') }}{% endif %}"
    with pytest.raises(InvalidRequestError, match="system first!"):
        _template(text).render([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "must not be empty"),
        ("hello", "must be a list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": None}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": 7, "content": "b"}], r"\[1\]\.role"),
    ],
)
def test_bad_messages_are_invalid_requests(
    template: ChatTemplate, messages: Any, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        template.render(messages)


def test_missing_template_is_a_format_error() -> None:
    with pytest.raises(ModelFormatError, match=r"m\.gguf: the model has no chat template"):
        ChatTemplate.from_metadata({}, source="m.gguf")


def test_syntax_error_is_a_format_error() -> None:
    with pytest.raises(ModelFormatError, match="syntax error at line 1"):
        _template("{% for m in messages %}{{ m.content }}")


def test_deferred_compile_reports_the_syntax_error_at_first_render() -> None:
    # How the loader builds it: a run that never chats must not import jinja2 (cold start).
    template = ChatTemplate.from_metadata(
        {"tokenizer.chat_template": "{% for m in messages %}"}, source="m.gguf", compile_now=False
    )
    for _ in range(2):  # the error again, not a half-built template
        with pytest.raises(ModelFormatError, match=r"m\.gguf: .* syntax error at line 1"):
            template.render([{"role": "user", "content": "hi"}])


def test_importing_the_engine_does_not_import_jinja2() -> None:
    code = "import sys; from ember.engine.llm import LLM; print('jinja2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_sandbox_blocks_unsafe_access() -> None:
    template = _template("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError):
        template.render([{"role": "user", "content": "hi"}])
