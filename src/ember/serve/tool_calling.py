"""Tool calling for chat completions: the request's tools and `tool_choice`, and the plan that
carries them out for this model: what the chat template is given, what grammar (if any) the
output must follow, and which parser finds the calls in it.

- `auto`: the template renders the tools in the model's own way, the output is free, and the
  parser of the template's format (`<tool_call>` blocks, Llama 3 JSON) finds the calls. A
  template with no tool calling cannot do this: 400.
- `required`: the output is forced (grammar) to a JSON array of calls, each a function's name
  and arguments valid against its schema (one call unless `parallel_tool_calls`).
- a named function: the output is forced to that function's arguments.
- `none`: the tools are rendered (where the template can) but no call is made.

`required` and named calls work whatever the template: where it cannot render tools, they are
described in a system message of Ember's own.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from ember.engine.structured_output import StructuredOutput
from ember.model.chat_template import ChatTemplate
from ember.serve.api_errors import BadRequestError, quoted
from ember.serve.openai_bodies import ChatBody
from ember.serve.tool_parsers import ToolCallFormat, ToolCallParser, new_call_id, parser_for

if TYPE_CHECKING:
    from ember.serve.openai_requests import GenerationOptions

# OpenAI's rule for function names.
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128
_ANY_OBJECT: dict[str, Any] = {"type": "object"}

Mode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Mode
    name: str | None = None  # the function, when mode is "function"


@dataclass(frozen=True, slots=True)
class ToolRequest:
    tools: list[dict[str, Any]]  # OpenAI's tool objects, as chat templates take them
    choice: ToolChoice
    parallel: bool

    def parameters(self, name: str) -> dict[str, Any]:
        for tool in self.tools:
            if tool["function"]["name"] == name:
                parameters: dict[str, Any] = tool["function"].get("parameters") or _ANY_OBJECT
                return parameters
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request's tools are carried out on this model."""

    template_tools: list[dict[str, Any]] | None  # for the template's `tools`; None: none
    system_note: str | None  # the tools described for a template that cannot render them
    structured: StructuredOutput | None  # the grammar the output must follow
    format: ToolCallFormat | None  # how to find the calls; None: no calls (tool_choice none)
    function_name: str | None = None

    def parser(self) -> ToolCallParser | None:
        if self.format is None:
            return None
        parser: ToolCallParser = parser_for(self.format, new_call_id, self.function_name)
        return parser

    def constrain(self, options: GenerationOptions) -> GenerationOptions:
        """The request's options with the plan's grammar (if any) for its output."""
        if self.structured is None:
            return options
        params = dataclasses.replace(options.params, structured=self.structured)
        return dataclasses.replace(options, params=params)

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as this template can render it: where it cannot render tools,
        the tools are described in the system message (one put first if none) and earlier
        calls are written into their assistant turn's text, in the format the note asks for."""
        if self.template_tools is not None:
            return messages
        flat = [_flattened(message) for message in messages]
        if self.system_note is None:
            return flat
        if flat and flat[0]["role"] == "system":
            first = flat[0]
            return [{**first, "content": f"{first['content']}\n\n{self.system_note}"}, *flat[1:]]
        return [{"role": "system", "content": self.system_note}, *flat]


def _flattened(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    written = json.dumps(
        [
            {"name": call["function"]["name"], "parameters": call["function"]["arguments"]}
            for call in calls
        ],
        ensure_ascii=False,
    )
    text = message.get("content") or ""
    return {"role": "assistant", "content": f"{text}\n{written}" if text else written}


def parse_tools(chat: ChatBody) -> ToolRequest | None:
    """The body's tools and tool_choice checked; None when the request uses none."""
    for name in ("functions", "function_call"):
        if getattr(chat, name) is not None:
            _fail(name, f"'{name}' (OpenAI's older function calling) is not supported; use 'tools'")
    choice = _tool_choice(chat.tool_choice)
    tools = chat.tools or []
    if not tools:
        if choice.mode in ("required", "function"):
            _fail("tool_choice", f"tool_choice {quoted(choice.name or choice.mode)} needs 'tools'")
        return None
    if len(tools) > MAX_TOOLS:
        _fail("tools", f"'tools' holds {len(tools)} tools; at most {MAX_TOOLS}")
    plain: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if tool.type != "function":
            _fail(f"{where}.type", f"{where}.type {quoted(tool.type)} is not supported; 'function'")
        function = tool.function
        if not _NAME.fullmatch(function.name):
            _fail(
                f"{where}.function.name",
                f"{where}.function.name {quoted(function.name)} must be 1 to 64 letters, "
                "digits, '_' or '-'",
            )
        if function.name in names:
            _fail(f"{where}.function.name", f"two tools are named {quoted(function.name)}")
        names.add(function.name)
        definition: dict[str, Any] = {"name": function.name}
        if function.description is not None:
            definition["description"] = function.description
        definition["parameters"] = function.parameters or _ANY_OBJECT
        plain.append({"type": "function", "function": definition})
    if choice.mode == "function" and choice.name not in names:
        _fail(
            "tool_choice.function.name",
            f"tool_choice names {quoted(choice.name or '')}, which is not among 'tools'",
        )
    parallel = True if chat.parallel_tool_calls is None else chat.parallel_tool_calls
    return ToolRequest(plain, choice, parallel)


def plan_tools(request: ToolRequest | None, template: ChatTemplate) -> ToolPlan | None:
    """How to carry out `request` with this template; 400 for `auto` on a template without
    tool calling."""
    if request is None:
        return None
    format = tool_call_format(template)
    rendered = request.tools if template.renders_tools else None
    mode = request.choice.mode
    note = None if rendered is not None else _system_note(request.tools, request.choice)
    if mode == "none":
        return ToolPlan(rendered, None, None, None)
    if mode == "auto":
        if format is None or rendered is None:
            _fail(
                "tool_choice",
                "this model's chat template has no tool calling, so it cannot choose to call a "
                "tool ('auto'); use tool_choice 'required' or name a function",
            )
        return ToolPlan(rendered, None, None, format)
    if mode == "required":
        schema = _call_array_schema(request)
        spec = StructuredOutput.json_schema(schema, "tools")
        return ToolPlan(rendered, note, spec, ToolCallFormat.CALL_ARRAY)
    name = request.choice.name
    assert name is not None
    spec = StructuredOutput.json_schema(request.parameters(name), "tools")
    return ToolPlan(rendered, note, spec, ToolCallFormat.NAMED_ARGUMENTS, name)


def tool_call_format(template: ChatTemplate) -> ToolCallFormat | None:
    """The format the template teaches its model to call tools in, from its own markup."""
    if not template.renders_tools:
        return None
    if "<tool_call>" in template.text:
        return ToolCallFormat.HERMES
    if "<|python_tag|>" in template.text or "ipython" in template.text:
        return ToolCallFormat.LLAMA3_JSON
    return None


def _tool_choice(value: Any) -> ToolChoice:
    if value is None or value == "auto":
        return ToolChoice("auto")
    if value in ("none", "required"):
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return ToolChoice("function", function["name"])
    _fail(
        "tool_choice",
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
    )


def _call_array_schema(request: ToolRequest) -> dict[str, Any]:
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "parameters": tool["function"]["parameters"],
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for tool in request.tools
    ]
    array: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not request.parallel:
        array["maxItems"] = 1
    return array


def _system_note(tools: list[dict[str, Any]], choice: ToolChoice) -> str:
    functions = json.dumps([tool["function"] for tool in tools], ensure_ascii=False)
    if choice.mode == "function":
        answer = f"Answer with the arguments of the function {choice.name} as a JSON object."
    else:
        answer = (
            "Answer with a JSON array of calls, each "
            '{"name": <function name>, "parameters": <arguments object>}.'
        )
    return f"You can call these functions: {functions}\n{answer}"


def _fail(param: str, message: str) -> NoReturn:
    raise BadRequestError(message, param=param)
