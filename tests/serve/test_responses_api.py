"""`/v1/responses` through the official `openai` client against a real `ember serve`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.serve.running_server import MODEL, RunningServer

QUESTION = "What is the capital of France?"
EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def test_create_answers_text_with_usage(server: RunningServer) -> None:
    response = server.client().responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0
    )
    assert "Paris" in response.output_text
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.status in ("completed", "incomplete")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None and response.usage.input_tokens > 10
    assert 1 <= response.usage.output_tokens <= 8
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_max_output_tokens_makes_it_incomplete(server: RunningServer) -> None:
    response = server.client().responses.create(
        model=MODEL, input="Tell me a long story.", max_output_tokens=3, temperature=0
    )
    assert response.status == "incomplete" and response.usage.output_tokens == 3  # type: ignore[union-attr]
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_the_stream_has_openais_events_and_the_same_text(server: RunningServer) -> None:
    client = server.client()
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=6, temperature=0)
    with client.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=6, temperature=0, stream=True
    ) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [*EVENTS, *["response.output_text.delta"] * len(deltas), *CLOSING, kinds[-1]]
    assert kinds[-1] == (
        "response.completed" if whole.status == "completed" else "response.incomplete"
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in deltas)  # type: ignore[union-attr]
    assert text == whole.output_text
    done = events[len(EVENTS) + len(deltas)]
    assert done.type == "response.output_text.done" and done.text == text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]


def test_a_conversation_continues_from_the_stored_response(server: RunningServer) -> None:
    client = server.client()
    first = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
        instructions="Answer in one short sentence.",
        max_output_tokens=10,
        temperature=0,
    )
    follow_up = client.responses.create(
        model=MODEL,
        input="And of Germany?",
        previous_response_id=first.id,
        max_output_tokens=10,
        temperature=0,
    )
    assert "Berlin" in follow_up.output_text
    assert follow_up.previous_response_id == first.id
    # The whole conversation sent again is the same prompt.
    again = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And of Germany?"},
        ],
        max_output_tokens=10,
        temperature=0,
    )
    assert again.usage.input_tokens == follow_up.usage.input_tokens  # type: ignore[union-attr]
    assert again.output_text == follow_up.output_text
    assert client.responses.retrieve(first.id).output_text == first.output_text


def test_instructions_reach_the_model(server: RunningServer) -> None:
    client = server.client()
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1, temperature=0)
    instructed = client.responses.create(
        model=MODEL, input="Hi", instructions="Reply in French.", max_output_tokens=1, temperature=0
    )
    assert instructed.instructions == "Reply in French."
    assert instructed.usage.input_tokens != plain.usage.input_tokens  # type: ignore[union-attr]


def test_an_unknown_or_unstored_previous_response_is_404(server: RunningServer) -> None:
    client = server.client()
    unstored = client.responses.create(
        model=MODEL, input="Hi", max_output_tokens=1, store=False, temperature=0
    )
    for response_id in ("resp_nope", unstored.id):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(
                model=MODEL, input="Hi", previous_response_id=response_id, max_output_tokens=1
            )
        assert caught.value.code == "previous_response_not_found"
        assert caught.value.param == "previous_response_id"  # type: ignore[attr-defined]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response_id)


def test_a_stored_response_can_be_deleted(server: RunningServer) -> None:
    client = server.client()
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object",
          "if": {}}}}}, "text.format.schema"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"model": "gpt-4o"}, "model"),
    ],
)  # fmt: skip
def test_what_it_cannot_honour_is_refused_by_name(
    server: RunningServer, fields: dict[str, object], param: str
) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 1} | fields
    answer = httpx.post(server.url + "/v1/responses", json=body, timeout=60)
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["error"]["param"] == param


def test_text_format_json_schema_constrains_the_output(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "people": {"type": "integer"}},
        "required": ["city", "people"],
        "additionalProperties": False,
    }
    client = server.client()
    response = client.responses.create(
        model=MODEL,
        input="Name a city and how many people live there.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        max_output_tokens=60,
    )
    value = json.loads(response.output_text)
    assert set(value) == {"city", "people"} and isinstance(value["people"], int)


def test_an_input_over_the_context_is_a_400(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().responses.create(model=MODEL, input="Hi", max_output_tokens=9000)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_output_tokens"  # type: ignore[attr-defined]
