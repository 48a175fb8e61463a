"""Request bodies -> typed requests, and the 400s (with the offending `param`) for bad ones."""

from __future__ import annotations

from typing import Any

import pytest

from ember.serve.api_errors import BadRequestError
from ember.serve.openai_requests import parse_chat_request, parse_completion_request
from ember.serve.request_fields import parse_json_object


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_chat_request_maps_openai_fields_to_sampling_params() -> None:
    request = parse_chat_request(
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
        max_choices=4,
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
    request = parse_chat_request({"model": "m", "messages": messages}, max_choices=1)
    assert request.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert request.options.params.logprobs is None and request.options.max_tokens is None


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
        ({"seed": -1}, "seed", "seed must be between"),
        ({"stop": ["a", 3]}, "stop", "strings"),
        ({"stop": [""]}, "stop", "must not be empty"),
        ({"top_logprobs": 2}, "top_logprobs", "needs 'logprobs': true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": "hi"}, "messages", "an array of messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "not supported"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "not a"),
        ({"request_timeout": 0}, "request_timeout", ">= 0.001"),
        ({"presence_penalty": float("inf")}, "presence_penalty", "finite"),
    ],
)
def test_bad_chat_fields_name_the_param(fields: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_chat_request(chat(**fields), max_choices=4)
    assert caught.value.param == param and words in caught.value.message
    assert caught.value.status == 400


def test_completion_prompt_shapes() -> None:
    def prompts(prompt: object) -> list[str | list[int]]:
        return parse_completion_request({"model": "m", "prompt": prompt}, 8).prompts

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    for bad in ([], [[]], [1, "a"], [-1], [True], 5, None):
        with pytest.raises(BadRequestError):
            prompts(bad)


def test_completion_limits_prompts_times_n_and_refuses_what_it_cannot_do() -> None:
    with pytest.raises(BadRequestError, match="3 prompts x n=2"):
        parse_completion_request({"model": "m", "prompt": ["a", "b", "c"], "n": 2}, 4)
    for field in ({"suffix": "x"}, {"best_of": 3}, {"echo": True, "logprobs": 1}):
        with pytest.raises(BadRequestError):
            parse_completion_request({"model": "m", "prompt": "a", **field}, 4)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'{"a": NaN}', b"\xff", b"[" * 100_000 + b"]" * 100_000],
)
def test_bodies_that_are_not_a_json_object(body: bytes) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_json_object(body)
    assert caught.value.code == "invalid_json"
