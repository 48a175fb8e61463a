"""The model's chat template (`tokenizer.chat_template`), rendered as Hugging Face renders it.

Templates come with the model file and are untrusted code, so they run in Jinja's immutable
sandbox. The environment copies transformers' `apply_chat_template` (trim_blocks,
lstrip_blocks, loop controls, a `tojson` that does not HTML-escape, `raise_exception`,
`strftime_now`) so a prompt renders here byte for byte as it did in the model's training.

jinja2 is imported when a template is first compiled, not with this module: a process that
never chats (`ember run` on a plain prompt) does not pay ~0.15 s of cold start for it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ember.errors import InvalidRequestError, ModelFormatError

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from ember.model.gguf_file import GGUFFile

TEMPLATE_KEY = "tokenizer.chat_template"


class _TemplateRaisedError(Exception):
    """The template itself refused the conversation through `raise_exception`."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaisedError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """Renders a list of `{"role", "content"}` messages into the prompt text the model expects."""

    __slots__ = ("_special_tokens", "_template", "source", "text")

    def __init__(
        self,
        text: str,
        source: str,
        special_tokens: Mapping[str, str],
        *,
        compile_now: bool = True,
    ) -> None:
        """`compile_now=False` defers compiling (and its `ModelFormatError`) to the first
        `render`."""
        self.text = text
        self.source = source
        self._special_tokens = dict(special_tokens)
        self._template: jinja2.Template | None = None
        if compile_now:
            self._compiled()

    def _compiled(self) -> jinja2.Template:
        if self._template is None:
            import jinja2

            try:
                self._template = _environment().from_string(self.text)
            except jinja2.TemplateSyntaxError as e:
                raise ModelFormatError(
                    f"{self.source}: {TEMPLATE_KEY} has a syntax error at line {e.lineno}: "
                    f"{e.message}"
                ) from e
        return self._template

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, *, compile_now: bool = True) -> ChatTemplate:
        return cls.from_metadata(gguf.metadata, source=str(gguf.path), compile_now=compile_now)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, object], source: str = "<metadata>", *, compile_now: bool = True
    ) -> ChatTemplate:
        """`ModelFormatError` when the file has no template or (compiled now) it does not
        parse."""
        text = metadata.get(TEMPLATE_KEY)
        if text is None:
            raise ModelFormatError(f"{source}: the model has no chat template ({TEMPLATE_KEY})")
        if not isinstance(text, str):
            raise ModelFormatError(f"{source}: {TEMPLATE_KEY} must be a string")
        return cls(text, source, _template_special_tokens(metadata), compile_now=compile_now)

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text; `InvalidRequestError` for malformed messages or ones the template
        rejects (e.g. roles out of order)."""
        import jinja2

        plain = _checked_messages(messages)
        template = self._compiled()
        try:
            rendered: str = template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self._special_tokens,
            )
        except _TemplateRaisedError as e:
            raise InvalidRequestError(f"the chat template rejected the messages: {e}") from e
        except jinja2.TemplateError as e:
            raise InvalidRequestError(
                f"the chat template could not render these messages: {e}"
            ) from e
        return rendered


def _template_special_tokens(metadata: Mapping[str, object]) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... as transformers passes them to templates (only those set)."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Sequence) or isinstance(tokens, str):
        return {}
    names = {
        "bos_token": "tokenizer.ggml.bos_token_id",
        "eos_token": "tokenizer.ggml.eos_token_id",
        "unk_token": "tokenizer.ggml.unknown_token_id",
        "pad_token": "tokenizer.ggml.padding_token_id",
    }
    found: dict[str, str] = {}
    for name, key in names.items():
        token_id = metadata.get(key)
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            token = tokens[token_id]
            if isinstance(token, str):
                found[name] = token
    return found


def _checked_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of {role, content} objects")
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    plain: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"messages[{index}] must be an object with 'role' and 'content', "
                f"not {type(message).__name__}"
            )
        for field in ("role", "content"):
            if field not in message:
                raise InvalidRequestError(f"messages[{index}] has no '{field}'")
            if not isinstance(message[field], str):
                raise InvalidRequestError(
                    f"messages[{index}].{field} must be a string, "
                    f"not {type(message[field]).__name__}"
                )
        # A copy: the template sees plain data and cannot reach the caller's objects.
        plain.append(dict(message))
    return plain
