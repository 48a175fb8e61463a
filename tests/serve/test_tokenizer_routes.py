"""`/tokenize` and `/detokenize` (vLLM's shapes) against a real `ember serve`."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.running_server import MODEL, RunningServer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def post(server: RunningServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_a_prompt_is_tokenized_as_completions_tokenize_it(server: RunningServer) -> None:
    answer = post(server, "/tokenize", {"model": MODEL, "prompt": "The capital of France is"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tokens"] == [504, 3575, 282, 4649, 314]
    assert body["count"] == 5 and body["max_model_len"] == 8192
    completion = server.client().completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=1
    )
    assert completion.usage is not None and completion.usage.prompt_tokens == body["count"]


def test_messages_count_as_the_chat_prompt(server: RunningServer) -> None:
    answer = post(
        server, "/tokenize", {"model": MODEL, "messages": CHAT, "return_token_strs": True}
    )
    body = answer.json()
    chat = server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None and body["count"] == chat.usage.prompt_tokens
    assert body["token_strs"][0] == "<|im_start|>" and len(body["token_strs"]) == body["count"]
    without = post(
        server, "/tokenize", {"model": MODEL, "messages": CHAT, "add_generation_prompt": False}
    ).json()
    assert (
        without["count"] < body["count"] and body["tokens"][: without["count"]] == without["tokens"]
    )


def test_detokenize_round_trips(server: RunningServer) -> None:
    text = "Ember says héllo, 世界! <|im_end|>"
    tokens = post(server, "/tokenize", {"model": MODEL, "prompt": text}).json()["tokens"]
    answer = post(server, "/detokenize", {"model": MODEL, "tokens": tokens})
    assert answer.status_code == 200 and answer.json() == {"prompt": text}
    assert post(server, "/detokenize", {"model": MODEL, "tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/detokenize", {"model": MODEL, "tokens": [1, 49152]}, 400, "tokens"),
        ("/detokenize", {"model": MODEL, "tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"model": MODEL, "tokens": "12"}, 400, "tokens"),
        ("/detokenize", {"model": MODEL, "tokens": [2**70]}, 400, "tokens"),
        ("/detokenize", {"model": MODEL}, 400, "tokens"),
        ("/detokenize", {"tokens": [1]}, 400, "model"),
        ("/tokenize", {"model": MODEL}, 400, "prompt"),
        ("/tokenize", {"model": MODEL, "prompt": 3}, 400, "prompt"),
        ("/tokenize", {"model": MODEL, "prompt": "a", "messages": CHAT}, 400, "messages"),
        ("/tokenize", {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, 400,
         "messages[0].role"),
        ("/tokenize", {"model": MODEL, "messages": []}, 400, "messages"),
        ("/tokenize", {"model": "gpt-4o", "prompt": "a"}, 404, "model"),
        ("/tokenize", [1, 2], 400, None),
    ],
)  # fmt: skip
def test_bad_bodies_are_openai_errors(
    server: RunningServer, path: str, body: object, status: int, param: str | None
) -> None:
    answer = post(server, path, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param


def test_malformed_json_is_a_400(server: RunningServer) -> None:
    for path in ("/tokenize", "/detokenize"):
        answer = httpx.post(server.url + path, content=b'{"model": ', timeout=60)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


def test_a_large_prompt_is_tokenized(server: RunningServer) -> None:
    text = "word" + " word" * 199_999  # 1 MB: parsed and tokenized on a thread
    answer = post(server, "/tokenize", {"model": MODEL, "prompt": text})
    assert answer.status_code == 200 and answer.json()["count"] == 200_000
