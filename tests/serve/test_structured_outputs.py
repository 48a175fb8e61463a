"""Structured outputs through a real `ember serve` (default model, CPU) with the real `openai`
client: `chat.completions.parse` with a Pydantic model, JSON mode, vLLM's choice/regex/grammar
fields, and the 400s for specs that cannot compile."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from collections.abc import Iterator
from typing import Annotated

import openai
import pydantic
import pytest

from tests.serve.running_server import MODEL, RunningServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("structured"), "--log-level", "warning")
    yield running
    assert running.stop() == 0, running.log.read_text()
    assert "Traceback" not in running.log.read_text(), running.log.read_text()


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(max_length=40)
    city: str = pydantic.Field(max_length=30)


class Person(pydantic.BaseModel):
    """Nested objects, an enum, an array, an optional field: what `.parse` users send. Strings
    are bounded: a 135M model sampled at temperature 1 may otherwise ramble inside one until
    max_tokens, which no grammar can prevent."""

    name: str = pydantic.Field(max_length=30)
    age: int = pydantic.Field(ge=0, le=150)
    favourite: Colour
    address: Address
    hobbies: list[Annotated[str, pydantic.Field(max_length=20)]] = pydantic.Field(max_length=3)
    nickname: Annotated[str, pydantic.Field(max_length=20)] | None


PROMPT = [{"role": "user", "content": "Invent a person and describe them."}]


def test_parse_gives_50_valid_people_at_temperature_1(server: RunningServer) -> None:
    client = server.async_client()

    async def one(seed: int) -> Person:
        completion = await client.chat.completions.parse(
            model=MODEL,
            messages=PROMPT,  # type: ignore[arg-type]
            response_format=Person,
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert choice.message.parsed is not None
        return choice.message.parsed

    async def all_of_them() -> list[Person]:
        async with client:
            return await asyncio.gather(*(one(seed) for seed in range(50)))

    people = asyncio.run(all_of_them())
    assert len(people) == 50
    assert len({person.model_dump_json() for person in people}) > 10  # sampled, not one answer


def test_json_mode_output_is_a_json_object(server: RunningServer) -> None:
    with server.client() as client:
        for seed in range(5):
            completion = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
                response_format={"type": "json_object"},
                temperature=0.8,
                seed=seed,
                max_tokens=200,
            )
            choice = completion.choices[0]
            if choice.finish_reason == "stop":
                assert isinstance(json.loads(choice.message.content or ""), dict)
            else:  # cut at max_tokens: still a JSON object's prefix
                assert (choice.message.content or "").startswith("{")


def test_vllm_fields_constrain_chat_and_completions(server: RunningServer) -> None:
    choices = ["positive", "negative", "neutral"]
    with server.client() as client:
        for seed in range(4):
            chat = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Classify: I love this phone!"}],
                temperature=1.0,
                seed=seed,
                max_tokens=10,
                extra_body={"guided_choice": choices},
            )
            assert chat.choices[0].message.content in choices
        text = client.completions.create(
            model=MODEL,
            prompt="My phone number is",
            temperature=1.0,
            max_tokens=20,
            extra_body={"structured_outputs": {"regex": r" \d{3}-\d{4}"}},
        )
        assert re.fullmatch(r" \d{3}-\d{4}", text.choices[0].text), text.choices[0].text
        grammar = 'start: "The answer is " ANSWER "."\nANSWER: /(yes|no)/'
        chat = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Is the sky blue?"}],
            max_tokens=20,
            extra_body={"guided_grammar": grammar},
        )
        assert chat.choices[0].message.content in ("The answer is yes.", "The answer is no.")


def test_a_streamed_schema_output_parses_when_joined(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "rank": {"type": "integer"}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    with server.client() as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a city and its rank."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": schema, "strict": True},
            },
            max_tokens=100,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    value = json.loads(text)
    assert set(value) == {"city", "rank"} and isinstance(value["rank"], int)


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "if": {"type": "object"}}}}},
            "response_format.json_schema",
            "if",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "needs",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
        ({"guided_json": {"$ref": "#"}}, "guided_json", "no output"),
        ({"guided_regex": "[a-"}, "guided_regex", "unclosed"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
        ({"guided_grammar": "start: missing"}, "guided_grammar", "missing"),
        ({"structured_outputs": {"structural_tag": {}}}, "structured_outputs.structural_tag", ""),
        ({"guided_json": {"type": "object"}, "guided_regex": "a"}, "guided_regex", "one of"),
        ({"guided_json": "{not json"}, "guided_json", "JSON schema"),
        ({"guided_json": {"type": "string", "enum": ["x" * 70000]}}, "guided_json", "bytes"),
    ],
)  # fmt: skip
def test_specs_that_cannot_compile_are_400s_naming_the_field(
    server: RunningServer, extra: dict[str, object], param: str, says: str
) -> None:
    with server.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            extra_body=extra,
        )
    error = caught.value.body
    assert isinstance(error, dict), error
    assert error["param"] == param, error
    assert says in error["message"], error


def test_a_large_schema_compiles_without_holding_up_other_requests(server: RunningServer) -> None:
    """A schema of 400 properties compiles on a thread: a plain request sent meanwhile is
    answered while it compiles (or soon after), not after a stalled event loop."""
    schema = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string", "pattern": f"^v{i}[a-z]{{2,8}}$"}
                       for i in range(400)},
        "required": [f"field_{i}" for i in range(400)],
    }  # fmt: skip
    client = server.async_client()

    async def both() -> tuple[float, float]:
        async with client:
            started = time.perf_counter()
            large = asyncio.ensure_future(
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Fill the form."}],
                    max_tokens=3,
                    extra_body={"guided_json": schema},
                )
            )
            await client.models.list()
            plain = time.perf_counter() - started
            await large
            return plain, time.perf_counter() - started

    plain, large = asyncio.run(both())
    assert plain < max(0.5, large / 2), (plain, large)
