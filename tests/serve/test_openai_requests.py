"""Request bodies (bytes) -> typed requests, and the 400s (naming the `param`) for bad ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ember.serve.api_errors import BadRequestError
from ember.serve.openai_requests import (
    ChatRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
)

HUGE_INTEGER = "1" + "0" * 4400  # past Python's 4,300-digit limit on int(str)
HUGE_NUMBER = "1" + "0" * 400  # an integer no float64 holds


def encoded(body: dict[str, Any], **raw: str) -> bytes:
    """`body` as JSON; `raw` adds fields whose value is written as is (JSON Python can't emit)."""
    text = json.dumps(body)
    for name, value in raw.items():
        text = text[:-1] + f', "{name}": {value}}}'
    return text.encode()


def chat(**fields: Any) -> bytes:
    return encoded({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def parse_chat(body: bytes, max_choices: int = 4) -> ChatRequest:
    return parse_chat_request(body, max_choices)


def parse_completion(body: dict[str, Any], max_choices: int = 8) -> CompletionRequest:
    return parse_completion_request(encoded(body), max_choices)


def refusal(parse: Any, body: bytes) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_chat_request_maps_openai_fields_to_sampling_params() -> None:
    request = parse_chat(
        chat(
            max_completion_tokens=7,
            max_tokens=99,
            temperature=0.5,
            top_p=0.9,
            top_k=-1,
            min_p=0.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            seed=3,
            stop="END",
            n=2,
            logprobs=True,
            top_logprobs=4,
            stream=True,
            stream_options={"include_usage": True},
            user="alice",
            request_timeout=2.5,
        ),
    )
    options = request.options
    assert options.max_tokens == 7  # max_completion_tokens wins over the deprecated max_tokens
    assert options.n == 2 and options.stream and options.include_usage
    assert options.timeout == 2.5 and options.user == "alice"
    params = options.params
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.5, 0.9, 0, 0.1)
    assert params.stop == ("END",) and params.logprobs == 4 and params.seed == 3
    assert options.params_for(5, 1).max_tokens == 5 and options.params_for(5, 1).seed == 4


def test_chat_content_parts_and_developer_role() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]
    request = parse_chat(encoded({"model": "m", "messages": messages}), max_choices=1)
    assert request.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert request.options.params.logprobs is None and request.options.max_tokens is None


def test_nulls_and_unknown_fields_are_absent_and_integers_may_be_written_as_floats() -> None:
    nulls = {name: None for name in ("temperature", "n", "stop", "stream_options", "tools")}
    unknown = {"metadata": {"a": [1, {"b": None}]}, "store": False, "x": 1e300}
    request = parse_chat(chat(**nulls, **unknown, max_tokens=3.0, seed=2.0))
    assert request.options.max_tokens == 3 and request.options.params.seed == 2
    assert request.options.n == 1 and request.options.params.temperature == 1.0


def test_seeds_wrap_per_choice_below_2_to_the_63() -> None:
    options = parse_chat(chat(seed=2**63 - 1, n=3)).options
    assert [options.params_for(1, i).seed for i in range(3)] == [2**63 - 1, 0, 1]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"temperature": "hot"}, "temperature", "must be a number, not a string"),
        ({"temperature": 101}, "temperature", "temperature must be in"),
        ({"n": 0}, "n", "between 1 and 4"),
        ({"n": 5}, "n", "between 1 and 4"),
        ({"n": True}, "n", "an integer, not a boolean"),
        ({"max_tokens": 0}, "max_tokens", ">= 1"),
        ({"max_tokens": 2.5}, "max_tokens", "an integer"),
        ({"max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens", ">= 1"),
        ({"seed": -1}, "seed", "seed must be between"),
        ({"stop": ["a", 3]}, "stop", "strings"),
        ({"stop": [""]}, "stop", "must not be empty"),
        ({"stop": ["a"] * 17}, "stop", "at most 16"),
        ({"stop_token_ids": [1, -2]}, "stop_token_ids", "must be >= 0, got -2"),
        ({"stop_token_ids": [2**31]}, "stop_token_ids", "<= 2147483647"),
        ({"top_logprobs": 2}, "top_logprobs", "needs 'logprobs': true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"logprobs": 1}, "logprobs", "must be a boolean, not an integer"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
            "must be a boolean",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "required"),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "not supported"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema.schema",
            "needs",
        ),
        ({"guided_choice": "yes"}, "guided_choice", "array"),
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": None}, "messages", "is required"),
        ({"messages": "hi"}, "messages", "an array of messages"),
        ({"messages": ["hi"]}, "messages[0]", "an object with 'role' and 'content'"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "not supported"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "required"),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "is required"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "not a"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
            "'text' parts only",
        ),
        ({"request_timeout": 0}, "request_timeout", ">= 0.001"),
        ({"model": 5}, "model", "must be a string, not an integer"),
        ({"model": None}, "model", "is required"),
    ],
)
def test_bad_chat_fields_name_the_param(fields: dict[str, Any], param: str, words: str) -> None:
    error = refusal(parse_chat, chat(**fields))
    assert error.param == param and words in error.message, error.message


def test_infinite_numbers_are_refused() -> None:
    # JSON has no infinity: a client that sends one writes a number past float64's range.
    error = refusal(parse_chat, encoded(json.loads(chat()), presence_penalty="1e999"))
    assert error.param == "presence_penalty" and "finite" in error.message


@pytest.mark.parametrize(
    "name",
    [
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "request_timeout",
    ],
)
def test_a_400_digit_integer_in_a_float_field_is_a_400(name: str) -> None:
    error = refusal(parse_chat, encoded(json.loads(chat()), **{name: HUGE_NUMBER}))
    assert error.param == name and "finite" in error.message


@pytest.mark.parametrize("name", ["max_tokens", "n", "seed", "top_k", "top_logprobs"])
def test_an_integer_past_4300_digits_is_a_400(name: str) -> None:
    error = refusal(parse_chat, encoded(json.loads(chat()), **{name: HUGE_INTEGER}))
    assert error.param == name and "too large" in error.message


def test_an_integer_past_4300_digits_in_an_unknown_field_is_ignored_like_the_field() -> None:
    assert parse_chat(encoded(json.loads(chat()), x_extra=HUGE_INTEGER)).model == "m"
    huge = encoded({"model": "m"}, prompt=f"[1, {HUGE_INTEGER}]")
    error = refusal(lambda body: parse_completion_request(body, 8), huge)
    assert error.param == "prompt" and "too large" in error.message


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ('[{"role": "user", "content": "a\\ud800b"}]', "messages[0].content"),
        ('[{"role": "user", "content": "ok"}, {"role": "user", "content": "\\udc00"}]',
         "messages[1].content"),
        ('[{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]',
         "messages[0].content[0].text"),
        ('[{"role": "\\ud800", "content": "x"}]', "messages[0].role"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_a_message_names_it(messages: str, param: str) -> None:
    error = refusal(parse_chat, encoded({"model": "m"}, messages=messages))
    assert error.param == param and "lone UTF-16 surrogate" in error.message
    error.json().encode()  # the error itself holds no surrogate: it can be sent


def test_a_lone_surrogate_in_the_model_or_prompt_names_it() -> None:
    error = refusal(parse_chat, encoded({"messages": [{"role": "user", "content": "hi"}]},
                                        model='"\\ud800"'))  # fmt: skip
    assert error.param == "model"
    for prompt in ('"\\udfff"', '["a", "b\\ud800"]'):
        body = encoded({"model": "m"}, prompt=prompt)
        error = refusal(lambda b: parse_completion_request(b, 8), body)
        assert error.param == "prompt" and "surrogate" in error.message
    # A pair is one character, as it should be.
    assert parse_completion({"model": "m", "prompt": "\U0001f600"}).prompts == ["\U0001f600"]


def test_a_tiny_positive_temperature_is_greedy() -> None:
    for temperature in (1e-40, 1e-300, 5e-324, 1e-6, 0):
        params = parse_chat(chat(temperature=temperature)).options.params
        assert params.greedy, temperature
    assert not parse_chat(chat(temperature=1e-4)).options.params.greedy


def test_completion_prompt_shapes() -> None:
    def prompts(prompt: object) -> list[str | list[int]]:
        return parse_completion({"model": "m", "prompt": prompt}).prompts

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    assert prompts(list(range(50_000))) == [list(range(50_000))]
    for bad in ([], [[]], [1, "a"], [-1], [True], [1.0], 5, None, {}, [["a"]], ["a", 1]):
        with pytest.raises(BadRequestError) as caught:
            prompts(bad)
        assert caught.value.param == "prompt", bad
    with pytest.raises(BadRequestError) as caught:
        prompts([[1, 2], [3, -4]])
    assert caught.value.message == "'prompt[1][1]' must be >= 0, got -4"
    body = b'{"model": "m", "prompt": \n [ \n [ 1 , 2 ] ] }'
    assert parse_completion_request(body, 8).prompts == [[1, 2]]


def test_completion_limits_prompts_times_n_and_refuses_what_it_cannot_do() -> None:
    with pytest.raises(BadRequestError, match="3 prompts x n=2"):
        parse_completion({"model": "m", "prompt": ["a", "b", "c"], "n": 2}, 4)
    for field, param in (
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 21}, "logprobs"),
    ):
        with pytest.raises(BadRequestError) as caught:
            parse_completion({"model": "m", "prompt": "a", **field}, 4)
        assert caught.value.param == param


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b"[]",
        b"null",
        b'"text"',
        b'{"a": NaN}',
        b'{"a": 1,}',
        b'{"a": 1} x',
        b"\xff",
        b'{"model": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
)
def test_bodies_that_are_not_a_json_object(body: bytes) -> None:
    for parse in (parse_chat_request, parse_completion_request):
        with pytest.raises(BadRequestError) as caught:
            parse(body, 4)
        assert caught.value.code == "invalid_json" and caught.value.param is None
        assert "the request body" in caught.value.message


def test_a_utf8_byte_order_mark_is_skipped_as_pythons_json_did() -> None:
    assert parse_chat(b"\xef\xbb\xbf" + chat()).model == "m"


@pytest.mark.parametrize(
    ("fields", "kind", "spec", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "json_object", "", "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "integer"}},
                }
            },
            "json_schema",
            '{"type": "integer"}',
            "response_format.json_schema",
        ),
        (
            {"guided_json": '{"type": "integer"}'},
            "json_schema",
            '{"type": "integer"}',
            "guided_json",
        ),
        ({"guided_choice": ["a", "b"]}, "choice", '["a", "b"]', "guided_choice"),
        ({"structured_outputs": {"regex": "a+"}}, "regex", "a+", "structured_outputs.regex"),
        (
            {"structured_outputs": {"json_object": True}},
            "json_object",
            "",
            "structured_outputs.json_object",
        ),
        (
            {"response_format": {"type": "text"}, "guided_grammar": 'start: "x"'},
            "grammar",
            'start: "x"',
            "guided_grammar",
        ),
    ],
)
def test_structured_output_fields_become_one_spec(
    fields: dict[str, object], kind: str, spec: str, param: str
) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})
    structured = parse_chat(body.encode()).options.params.structured
    assert structured is not None
    assert (structured.kind.value, structured.spec, structured.param) == (kind, spec, param)
    plain = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert parse_chat(plain.encode()).options.params.structured is None
