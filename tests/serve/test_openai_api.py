"""The API through the official `openai` client against a real `ember serve` process."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.serve.running_server import MODEL, RunningServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(server: RunningServer) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "ember"


def test_chat_completion(server: RunningServer) -> None:
    response = server.client().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0
    )
    choice = response.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.prompt_tokens > 10
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.id.startswith("chatcmpl-") and response.model == MODEL


def test_chat_stream_matches_the_whole_response_and_reports_usage(server: RunningServer) -> None:
    client = server.client()
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert (
        finishes[-1] == whole.choices[0].finish_reason and finishes.count(None) == len(finishes) - 1
    )
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_with_several_prompts_and_n(server: RunningServer) -> None:
    response = server.client().completions.create(
        model=MODEL, prompt=["The sky is", "Water is"], n=2, max_tokens=2, temperature=0.8, seed=3
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason in ("stop", "length") for c in response.choices)
    assert response.usage is not None and response.usage.completion_tokens <= 8


def test_completion_from_token_ids_with_echo(server: RunningServer) -> None:
    ids = [504, 3575, 282, 4649, 314]  # "The capital of France is"
    response = server.client().completions.create(
        model=MODEL, prompt=ids, max_tokens=2, temperature=0, echo=True
    )
    assert response.choices[0].text.startswith("The capital of France is")
    assert response.usage is not None and response.usage.prompt_tokens == len(ids)


def test_stop_string_ends_the_text_before_it(server: RunningServer) -> None:
    # Greedy, the model continues " 6, 7, 8, 9"; each digit and separator is its own token.
    response = server.client().completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=8, temperature=0, stop=[" 8", "zzz"]
    )
    stopped = response.choices[0]
    assert stopped.text == " 6, 7," and stopped.finish_reason == "stop"


def test_seed_repeats_a_sampled_answer(server: RunningServer) -> None:
    client = server.client()

    def sample() -> str:
        response = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=1.0, seed=1234
        )
        return response.choices[0].text

    assert sample() == sample()


def test_chat_logprobs(server: RunningServer) -> None:
    response = server.client().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = response.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == response.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob <= 0 and math.isclose(entry.logprob, entry.top_logprobs[0].logprob)
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely
        assert bytes(entry.bytes or []).decode("utf-8", "replace") == entry.token


def test_completion_logprobs(server: RunningServer) -> None:
    response = server.client().completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=2, temperature=0, logprobs=1
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert logprobs.text_offset == [0, len(logprobs.tokens[0])]
    assert all(len(top) == 1 for top in logprobs.top_logprobs or [])


def test_unknown_model_is_not_found(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        server.client().chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=1)
    assert caught.value.code == "model_not_found" and MODEL in caught.value.message


def test_a_huge_model_name_is_not_echoed_whole(server: RunningServer) -> None:
    # Before: a 1 MB model name came back in a 1 MB 404.
    name = "x" * (1 << 20)
    response = httpx.post(
        server.url + "/v1/completions",
        json={"model": name, "prompt": "Hi", "max_tokens": 1},
        timeout=60,
    )
    assert response.status_code == 404 and len(response.content) < 1000, len(response.content)
    message = response.json()["error"]["message"]
    assert "'" + "x" * 100 + "'... (1048576 characters)" in message and MODEL in message


def test_wrong_types_are_bad_requests(server: RunningServer) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature="hot",  # type: ignore[arg-type]
        )
    assert caught.value.param == "temperature" and "must be a number" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hi", top_p=1.5, max_tokens=1)
    assert caught.value.param == "top_p"


def test_prompt_plus_max_tokens_over_the_context_states_the_numbers(
    server: RunningServer,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(model=MODEL, prompt="Hello there", max_tokens=8191)
    message = caught.value.message
    assert caught.value.code == "context_length_exceeded"
    assert (
        "8191" in message and "8193" in message and "8192" in message and "has 2 tokens" in message
    )


def test_body_too_large_is_413(server: RunningServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        server.client().completions.create(model=MODEL, prompt="x" * (5 << 20), max_tokens=1)
    assert caught.value.status_code == 413


def test_deadline_is_504_and_frees_the_sequence(server: RunningServer) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        server.client().completions.create(
            model=MODEL,
            prompt="Tell me a long story.",
            max_tokens=500,
            extra_body={"request_timeout": 0.5, "ignore_eos": True},
        )
    assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
    assert server.wait_metric("vllm:num_requests_running", 0) == 0
    assert server.wait_metric("vllm:kv_cache_usage_perc", 0) == 0


def test_health_ready_and_metrics(server: RunningServer) -> None:
    assert server.get("/health").json() == {"status": "ok"}
    ready = server.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = server.get("/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:iteration_tokens_total_bucket",
        "ember:worker_restarts_total",
        "ember:batch_size_bucket",
        "ember:http_requests_total",
    ):
        assert name in text, name
    assert server.metric("ember:http_requests_total", endpoint="/health", status="200") >= 1


def test_unknown_route_and_wrong_method_are_openai_errors(server: RunningServer) -> None:
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong = httpx.get(server.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_models_retrieve_and_an_unknown_id(server: RunningServer) -> None:
    client = server.client()
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by == "ember"
    assert model.created == client.models.list().data[0].created
    for other in ("gpt-4o", "org/some-model", "x" * 5000):
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve(other)
        assert caught.value.code == "model_not_found" and caught.value.status_code == 404
        assert len(caught.value.message) < 300


def test_system_fingerprint_is_on_every_answer_and_stable(server: RunningServer) -> None:
    client = server.client()
    chat = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
    fingerprint = chat.system_fingerprint
    assert fingerprint is not None and fingerprint.startswith("fp_")
    completion = client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    assert completion.system_fingerprint == fingerprint
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.system_fingerprint for c in chunks} == {fingerprint}
    stream = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, stream=True)
    assert {c.system_fingerprint for c in stream} == {fingerprint}


def test_completion_top_logprobs_always_hold_the_sampled_token(server: RunningServer) -> None:
    # Hot sampling picks tokens outside the single most likely one; OpenAI lists them anyway.
    response = server.client().completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=5.0, seed=7, logprobs=1
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert logprobs.token_logprobs is not None
    outside = 0
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert top[token] == logprob
        outside += len(top) == 2
    assert outside > 0  # the case this is about happened
