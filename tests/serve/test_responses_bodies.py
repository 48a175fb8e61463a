"""`/v1/responses` bodies: what is taken, and the 400 naming each field that is refused."""

from __future__ import annotations

import json

import pytest

from ember.serve.api_errors import BadRequestError
from ember.serve.responses_bodies import parse_responses_request


def parse(**fields: object) -> object:
    return parse_responses_request(json.dumps({"model": "m", **fields}).encode())


def refusal(**fields: object) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        parse(**fields)
    return caught.value


def test_input_as_text_or_messages_becomes_chat_messages() -> None:
    assert parse(input="Hi").messages == [{"role": "user", "content": "Hi"}]  # type: ignore[attr-defined]
    request = parse_responses_request(
        json.dumps(
            {
                "model": "m",
                "instructions": "Be brief.",
                "input": [
                    {"role": "developer", "content": "Answer in French."},
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": "Capital "},
                        {"type": "input_text", "text": "of Italy?"},
                    ]},
                    {"type": "message", "role": "assistant", "content": [
                        {"type": "output_text", "text": "Rome.", "annotations": []},
                    ]},
                ],
                "max_output_tokens": 16.0,
                "temperature": 0.5,
                "top_p": 0.9,
                "store": False,
                "tools": [],
                "tool_choice": "auto",
                "reasoning": {"effort": None},
                "truncation": "disabled",
                "text": {"format": {"type": "text"}},
                "metadata": {"k": "v"},
            }
        ).encode()
    )  # fmt: skip
    assert request.messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    assert request.instructions == "Be brief." and not request.store
    assert request.options.max_tokens == 16 and request.options.params.temperature == 0.5
    assert request.options.params.top_p == 0.9 and request.metadata == {"k": "v"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "schema": 3}}}, "text.format.schema"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": [{"type": "function_call_output", "output": "1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "tool", "content": "1"}]}, "input[0].role"),
        ({"input": [{"content": "1"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
         "input[0].content[0].text"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"input": None}, "input"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"input": "x", "temperature": -1}, "temperature"),
        ({"input": "x", "top_p": 2}, "top_p"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
    ],
)  # fmt: skip
def test_refused_fields_are_named(fields: dict[str, object], param: str) -> None:
    error = refusal(**({"input": "x"} | fields))
    assert error.status == 400 and error.param == param, error.message


def test_model_is_required() -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_responses_request(b'{"input": "x"}')
    assert caught.value.param == "model" and caught.value.code == "missing_required_parameter"
