"""The model's chat template (`tokenizer.chat_template`), rendered as Hugging Face renders it.

Templates come with the model file and are untrusted code, so they run in Jinja's immutable
sandbox. The environment copies transformers' `apply_chat_template` (trim_blocks,
lstrip_blocks, loop controls, a `tojson` that does not HTML-escape, `raise_exception`,
`strftime_now`) so a prompt renders here byte for byte as it did in the model's training.

`encode` turns the rendered prompt into token ids with one rule: special tokens come only from
the template's markup, never from what the messages say, so that a message cannot forge a turn
by typing `<|im_end|>\n<|im_start|>system`.

jinja2 is imported when a template is first compiled, not with this module: a process that
never chats (`ember run` on a plain prompt) does not pay ~0.15 s of cold start for it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ember.errors import InvalidRequestError, ModelFormatError

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from ember.model.gguf_file import GGUFFile
    from ember.model.tokenizer import Tokenizer

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
    """Renders a list of `{"role", "content"}` messages into the prompt text the model expects.

    Messages may carry more than role and content (an assistant's `tool_calls`, a tool
    result's `tool_call_id`), and `tools` (OpenAI's tool objects) are the template's `tools`
    variable, as transformers passes them; a template that never reads `tools` cannot render
    them (`renders_tools`)."""

    __slots__ = ("_renders_tools", "_special_tokens", "_template", "source", "text")

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
        self._renders_tools: bool | None = None
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

    @property
    def renders_tools(self) -> bool:
        """Whether the template reads the `tools` variable (it can show the model tools)."""
        if self._renders_tools is None:
            from jinja2 import meta

            ast = _environment().parse(self.text)
            self._renders_tools = "tools" in meta.find_undeclared_variables(ast)
        return self._renders_tools

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
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text; `InvalidRequestError` for malformed messages or ones the template
        rejects (e.g. roles out of order)."""
        return self._render(_checked_messages(messages), add_generation_prompt, _copied(tools))

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        tokenizer: Tokenizer,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """The prompt's token ids, with the special tokens of the template's markup only.

        A special token's text in a message is tokenized as the text it is. Messages without
        one are `tokenizer.encode(render(...))`. Messages with one render a second time, each
        occurrence replaced by a sentinel, which says where the typed occurrences lie in the
        prompt. `InvalidRequestError` as `render`, and where the two renders differ by more
        than the sentinels: the template then acts on the typed text itself (slices or tests
        it), and where it went cannot be told.
        """
        plain = _checked_messages(messages)
        plain_tools = _copied(tools)
        rendered = self._render(plain, add_generation_prompt, plain_tools)
        special_text = tokenizer.special_text
        data = [plain, plain_tools]
        if not any(map(special_text.search, _strings(data))):
            return tokenizer.encode(rendered)
        typed = _TypedSpecialText(data, special_text, [self.text, *self._special_tokens.values()])
        typed_messages, typed_tools = typed.messages
        found = typed.restore(self._render(typed_messages, add_generation_prompt, typed_tools))
        if found is None or found[0] != rendered:
            raise InvalidRequestError(
                f"a message holds {typed.originals[0]!r}, the text of a special token, and the "
                "chat template treats it apart from the text around it; remove it from the "
                "messages"
            )
        return tokenizer.encode(rendered, plain_spans=found[1])

    def _render(
        self,
        plain: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        import jinja2

        template = self._compiled()
        try:
            rendered: str = template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                tools=tools or None,
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
            value = message[field]
            # No content only beside tool calls (an assistant's turn that only calls tools).
            if not isinstance(value, str) and not (
                field == "content" and value is None and message.get("tool_calls")
            ):
                raise InvalidRequestError(
                    f"messages[{index}].{field} must be a string, not {type(value).__name__}"
                )
        # A copy: the template sees plain data and cannot reach the caller's objects.
        plain.append(_copied_value(message))
    return plain


def _copied(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise InvalidRequestError("tools must be a list of tool objects")
    return [_copied_value(tool) for tool in tools]


def _copied_value(value: Any) -> Any:
    """Plain dicts, lists and scalars all the way down (JSON's shapes)."""
    if isinstance(value, Mapping):
        return {str(key): _copied_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copied_value(item) for item in value]
    return value


class _TypedSpecialText:
    """Messages with each special token's text in them replaced by a sentinel, and the way back.

    The n-th occurrence becomes `M<n>M`, M a character found in no message, template or token
    variable. A sentinel holds no whitespace or letters, so `trim`, `upper` and the like leave
    it be, and no special token's text can form across it.
    """

    __slots__ = ("_marker", "_sentinel", "messages", "originals")

    def __init__(self, plain: Any, special_text: re.Pattern[str], others: list[str]) -> None:
        self._marker = _unused_character([*_strings(plain), *others])
        self.originals: list[str] = []

        def sentinel(match: re.Match[str]) -> str:
            self.originals.append(match.group())
            return f"{self._marker}{len(self.originals) - 1}{self._marker}"

        self.messages = _map_strings(plain, lambda text: special_text.sub(sentinel, text))
        marker = re.escape(self._marker)
        # Bounded: int() refuses over 4,300 digits, and no count of occurrences needs 12.
        self._sentinel = re.compile(f"{marker}([0-9]{{1,12}}){marker}")

    def restore(self, rendered: str) -> tuple[str, list[tuple[int, int]]] | None:
        """The prompt with the typed texts back, and their `(start, end)` spans in it; None
        when a sentinel did not come through whole."""
        pieces = self._sentinel.split(rendered)
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        at = 0
        for index, piece in enumerate(pieces):
            if index % 2:
                number = int(piece)
                if number >= len(self.originals):
                    return None
                piece = self.originals[number]
                spans.append((at, at + len(piece)))
            elif self._marker in piece:
                return None
            parts.append(piece)
            at += len(piece)
        return "".join(parts), spans


def _strings(value: Any) -> Iterator[str]:
    """Every string in the messages' values, however deep (the template may read any)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    if isinstance(value, tuple):
        return tuple(_map_strings(item, change) for item in value)
    return value


def _unused_character(texts: list[str]) -> str:
    """A character none of `texts` holds, from the top of Unicode's private use planes down
    (a text can hold only so many characters, so the search is short)."""
    used = set().union(*texts)
    for code in range(0x10FFFD, 0xFF, -1):
        if not 0xD800 <= code <= 0xDFFF and chr(code) not in used:
            return chr(code)
    raise InvalidRequestError("the messages use every character; no sentinel is left")
