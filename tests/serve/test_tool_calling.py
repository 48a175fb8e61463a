"""Tool calling through a real `ember serve` with the real `openai` client and LangChain: the
default model's template cannot render tools, so `required` and named calls are forced by the
grammar (their arguments always parse and match the schema), `auto` is a clear 400, and a
two-turn exchange (call, tool result, answer) works streamed and not. A model whose template
renders tools (the tiny Qwen2 fixture, Hermes `<tool_call>` format) gets them in its prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.running_server import MODEL, RunningServer, start_server

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tools"), "--log-level", "warning")
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


def valid_weather(arguments: str) -> dict[str, Any]:
    value = json.loads(arguments)
    assert set(value) == {"city", "unit"} and value["unit"] in ("celsius", "fahrenheit")
    assert isinstance(value["city"], str) and len(value["city"]) <= 30
    return value


def test_required_always_calls_with_arguments_that_match_the_schema(server: RunningServer) -> None:
    with server.client() as client:
        for seed in range(8):
            completion = client.chat.completions.create(
                model=MODEL,
                messages=ASK,  # type: ignore[arg-type]
                tools=[WEATHER, TIME],  # type: ignore[list-item]
                tool_choice="required",
                parallel_tool_calls=False,
                temperature=1.0,
                seed=seed,
                max_tokens=120,
            )
            choice = completion.choices[0]
            assert choice.finish_reason == "tool_calls", choice
            calls = choice.message.tool_calls or []
            assert len(calls) == 1 and calls[0].type == "function"
            assert calls[0].id.startswith("call_")
            if calls[0].function.name == "get_weather":
                valid_weather(calls[0].function.arguments)
            else:
                assert calls[0].function.name == "get_time"
                assert set(json.loads(calls[0].function.arguments)) == {"zone"}


def test_a_named_function_is_called_streamed_and_not(server: RunningServer) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with server.client() as client:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            max_tokens=80,
            temperature=0.0,
        )
        calls = completion.choices[0].message.tool_calls or []
        assert [call.function.name for call in calls] == ["get_weather"]
        whole = valid_weather(calls[0].function.arguments)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            max_tokens=80,
            temperature=0.0,
            stream=True,
        )
        fragments, names, ids, finish = [], [], set(), None
        for chunk in stream:
            for delta_call in chunk.choices[0].delta.tool_calls or []:
                assert delta_call.index == 0
                if delta_call.id:
                    ids.add(delta_call.id)
                if delta_call.function and delta_call.function.name:
                    names.append(delta_call.function.name)
                if delta_call.function and delta_call.function.arguments:
                    fragments.append(delta_call.function.arguments)
            finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and len(ids) == 1 and finish == "tool_calls"
    assert len(fragments) > 1  # the arguments arrive in pieces, as OpenAI streams them
    assert valid_weather("".join(fragments)) == whole  # greedy both times


def test_two_turns_call_result_answer(server: RunningServer) -> None:
    with server.client() as client:
        first = client.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            max_tokens=80,
        )
        message = first.choices[0].message
        call = (message.tool_calls or [])[0]
        history = [
            *ASK,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
        ]
        for stream in (False, True):
            answer = client.chat.completions.create(
                model=MODEL,
                messages=history,  # type: ignore[arg-type]
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice="none",
                max_tokens=30,
                stream=stream,
            )
            if stream:
                text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)  # type: ignore[union-attr]
            else:
                text = answer.choices[0].message.content or ""  # type: ignore[union-attr]
                assert not answer.choices[0].message.tool_calls  # type: ignore[union-attr]
            assert text.strip()


def test_langchain_bind_tools(server: RunningServer) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        return f"Sunny in {city}"

    llm = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="test", model=MODEL, max_tokens=60, max_retries=0
    )
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    asked = [HumanMessage("What is the weather in Rome?")]
    reply = bound.invoke(asked)
    assert [call["name"] for call in reply.tool_calls] == ["get_weather"]
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)
    result = get_weather.invoke(reply.tool_calls[0])
    assert isinstance(result, ToolMessage)
    final = llm.bind_tools([get_weather], tool_choice="none").invoke([*asked, reply, result])
    assert isinstance(final.content, str) and final.content.strip()
    streamed = list(bound.stream(asked))
    joined = streamed[0]
    for piece in streamed[1:]:
        joined += piece  # type: ignore[assignment]
    assert [call["name"] for call in joined.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "no tool calling"),
        ({"tools": [WEATHER]}, "tool_choice", "no tool calling"),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice.function.name", "not among"),
        ({"tools": [WEATHER, WEATHER], "tool_choice": "required"}, "tools[1].function.name",
         "two tools"),
        ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type", "code"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
         "tools[0].function.name", "letters"),
        ({"tools": [WEATHER], "tool_choice": "maybe"}, "tool_choice", "must be"),
        ({"functions": [{"name": "f"}]}, "functions", "use 'tools'"),
        ({"tools": [WEATHER], "tool_choice": "required",
          "response_format": {"type": "json_object"}}, "response_format", "one of them"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "if": {}}}}], "tool_choice": "required"}, "tools", "if"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(
    server: RunningServer, fields: dict[str, Any], param: str, says: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **fields}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
        ({"role": "user", "content": None}, "messages[1].content"),
        ({"role": "user", "content": "x", "tool_calls": []}, "messages[1].tool_calls"),
        ({"role": "robot", "content": "x"}, "messages[1].role"),
    ],
)
def test_bad_tool_messages_are_400s(server: RunningServer, message: dict[str, Any], param: str):
    body = {"model": MODEL, "messages": [*ASK, message], "max_tokens": 5}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_template_that_renders_tools_gets_them(tmp_path: Path) -> None:
    """The tiny Qwen2 fixture's template renders tools (Hermes format): `auto` is taken, and
    the tools go into the prompt (/tokenize counts them; with its 256-token context, the
    request is then too long, which says the tools were rendered)."""
    model = Path(__file__).parents[1] / "fixtures" / "families" / "qwen2.gguf"
    running = start_server(tmp_path, "--model", str(model), "--log-level", "warning")
    try:
        name = running.get("/v1/models").json()["data"][0]["id"]
        tokenize = f"{running.url}/tokenize"
        plain = httpx.post(tokenize, json={"model": name, "messages": ASK}, timeout=30)
        with_tools = httpx.post(
            tokenize, json={"model": name, "messages": ASK, "tools": [WEATHER]}, timeout=30
        )
        assert plain.status_code == with_tools.status_code == 200, with_tools.text
        count = with_tools.json()["count"]
        assert count > plain.json()["count"] + 50
        body = {"model": name, "messages": ASK, "tools": [WEATHER], "max_tokens": 4}
        auto = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=30)
        assert auto.status_code == 400, auto.text
        error = auto.json()["error"]
        assert (
            error["code"] == "context_length_exceeded" and f"has {count} tokens" in error["message"]
        )
    finally:
        assert running.stop() == 0, running.log.read_text()
