"""Tool-call parsers: typical outputs of each format, and the invariant that feeding an output
in any pieces (every split point, seeded random chunkings, one character at a time) gives the
same content, calls and joined argument fragments as feeding it whole."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from ember.serve.tool_parsers import (
    CallIds,
    ContentDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallFormat,
    ToolCallParser,
    new_call_id,
    parser_for,
)


def counting_ids() -> CallIds:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


@dataclass
class Outcome:
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    streamed: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id, name, args
    first_delta_at: dict[int, int] = field(default_factory=dict)  # piece of each first delta


def run(make: Callable[[CallIds], ToolCallParser], pieces: list[str]) -> Outcome:
    """Feeds `pieces` and checks the events are well formed as OpenAI streams them."""
    parser = make(counting_ids())
    outcome = Outcome()
    batches = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    for at, events in enumerate(batches):
        for event in events:
            if isinstance(event, ContentDelta):
                assert event.text, "an empty content delta"
                outcome.content += event.text
                continue
            assert isinstance(event, ToolCallDelta)
            if event.index not in outcome.streamed:
                assert event.index == len(outcome.streamed), "calls begin in index order"
                assert event.id is not None and event.name is not None
                outcome.streamed[event.index] = (event.id, event.name, event.arguments)
                outcome.first_delta_at[event.index] = at
            else:
                assert event.id is None and event.name is None
                assert event.index == max(outcome.streamed), "an earlier call's delta"
                call_id, name, arguments = outcome.streamed[event.index]
                outcome.streamed[event.index] = (call_id, name, arguments + event.arguments)
    outcome.calls = parser.calls
    by_id = {call_id: (name, args) for call_id, name, args in outcome.streamed.values()}
    assert len(by_id) == len(outcome.streamed), "ids are unique"
    for call in outcome.calls:
        assert by_id[call.id] == (call.name, call.arguments), "calls = the joined deltas"
        assert isinstance(json.loads(call.arguments), dict)
    return outcome


def parser_of(
    format: ToolCallFormat, name: str | None = None
) -> Callable[[CallIds], ToolCallParser]:
    return lambda call_ids: parser_for(format, call_ids, name)


HERMES = parser_of(ToolCallFormat.HERMES)
LLAMA3 = parser_of(ToolCallFormat.LLAMA3_JSON)
CALL_ARRAY = parser_of(ToolCallFormat.CALL_ARRAY)
NAMED = parser_of(ToolCallFormat.NAMED_ARGUMENTS, "get_weather")


def calls_of(outcome: Outcome) -> list[tuple[str, object]]:
    return [(call.name, json.loads(call.arguments)) for call in outcome.calls]


WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
NESTED_ARGS = '{"a": {"b": [1, -2.5e-3, {"c": null}], "d": true}, "e": false, "f": 0}'
TRICKY_ARGS = '{"code": "if (x) { y(\\"}\\"); } </tool_call> <tool_call>", "q": "\\u00e9\\\\"}'
UNICODE_ARGS = '{"city": "Zürich 🌍", "greeting": "こんにちは"}'

HERMES_SAMPLES = [
    f"<tool_call>\n{WEATHER}\n</tool_call>",
    f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
    '{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
    f"Let me look that up.\n\n<tool_call>\n{WEATHER}\n</tool_call>\nOne moment.",
    f'<tool_call>{{"name": "f", "arguments": {NESTED_ARGS}}}</tool_call>',
    f'<tool_call>\n{{"name": "run", "arguments": {TRICKY_ARGS}}}\n</tool_call>',
    f'<tool_call>{{"name": "wetter", "arguments": {UNICODE_ARGS}}}</tool_call> ✓',
    '<tool_call>\n{"arguments": {"a": [1, 2]}, "name": "late_name"}\n</tool_call>',
    '<tool_call>{"name": "s", "arguments": "{\\"a\\": {\\"b\\": 1}}"}</tool_call>',
    "<tool_call>\nnot json at all\n</tool_call> and more",
    '<tool_call>{"name": get_weather, "arguments": {}}</tool_call>',
    '<tool_call>{"arguments": {"a": 1}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
    '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>',
    '<tool_call>oops <tool_call>{"name": "f", "arguments": {}}</tool_call>',
    "a < b, <tool_ and <tool_call",
    '<tool_call>\n{"name": "cut", "argu',
    '<tool_call>{"name": "f", "arguments": {"a": 1}}\nSure.',
    '<tool_call>{"name": "f", "arguments": {"a": 1}} </tool_cal> x',
    '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>',
    "",
    "plain answer, no calls",
    f"\n\n<tool_call>\n{WEATHER}\n</tool_call>\n\n",
    " \n ",
    "\n<tool_call>{nope}</tool_call>\n",
]

LLAMA3_SAMPLES = [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "arguments": {"b": [2]}}',
    '\n\n  {"name": "f", "parameters": ' + NESTED_ARGS + "}\n",
    '{"name": "run", "parameters": ' + TRICKY_ARGS + "}",
    '{"name": "wetter", "parameters": ' + UNICODE_ARGS + "}",
    '{"parameters": {"a": 1}, "name": "late_name"}',
    '{"name": "s", "parameters": "{\\"a\\": 1}"}',
    "The weather in Paris is sunny.",
    '{"answer": 42, "note": "not a call"}',
    '{"name": f}',
    '<|python_tag|>brave_search.call(query="weather")',
    '{"name": "f", "parameters": {}} thanks',
    '{"name": "f", "parameters": {}};',
    '{"name": "f", "parameters": {}}; nope',
    '{"name": "f", "parameters": {"a": 1',
    "<|pyth",
    "   ",
    "",
]

CALL_ARRAY_SAMPLES = [
    '[{"name": "get_weather", "parameters": {"city": "Paris"}}]',
    '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": ' + NESTED_ARGS + "}]",
    ' [ {"name":"f","parameters":{}} ,\n{"parameters": {"x": "]"}, "name": "g"} ] ',
    '[{"name": "run", "parameters": ' + TRICKY_ARGS + "}]",
    '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "param',
    '[{"name": "f", "parameters": {"a": 1}}] extra',
    '{"name": "f", "parameters": {}}',
    "[]",
    "",
]

NAMED_SAMPLES = ['{"city": "Paris", "unit": "celsius"}', NESTED_ARGS, UNICODE_ARGS, '{"city": "Pa']

ALL_SAMPLES = [
    pytest.param(make, text, id=f"{format}-{i}")
    for format, make, samples in [
        ("hermes", HERMES, HERMES_SAMPLES),
        ("llama3_json", LLAMA3, LLAMA3_SAMPLES),
        ("call_array", CALL_ARRAY, CALL_ARRAY_SAMPLES),
        ("named_arguments", NAMED, NAMED_SAMPLES),
    ]
    for i, text in enumerate(samples)
]


def same(a: Outcome, b: Outcome) -> bool:
    return (a.content, a.calls, a.streamed) == (b.content, b.calls, b.streamed)


@pytest.mark.parametrize(("make", "text"), ALL_SAMPLES)
def test_any_pieces_give_what_the_whole_gives(
    make: Callable[[CallIds], ToolCallParser], text: str
) -> None:
    whole = run(make, [text])
    if not whole.streamed and make in (HERMES, LLAMA3):
        assert whole.content == text, "an output without calls is all content"
    for cut in range(1, len(text)):
        assert same(run(make, [text[:cut], text[cut:]]), whole), f"split at {cut}"
    assert same(run(make, list(text)), whole), "one character at a time"
    rng = random.Random(len(text))
    for _ in range(20 if len(text) > 1 else 0):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        assert same(run(make, pieces), whole), f"pieces {pieces!r}"


TOKENS = [
    *("<tool_call>", "</tool_call>", "<|python_tag|>", "{", "}", "[", "]", ":", ",", ";"),
    *('"name"', '"arguments"', '"parameters"', '"f"', '"x\\"}"', '"\\u00e9"', '"', "\\"),
    *(" ", "\n", "1", "-0.5e3", "true", "null", "a", "<", "🌍"),
    '{"name": "f", "arguments": {"a": 1}}',
    '[{"name": "g", "parameters": {}}',
]


@pytest.mark.parametrize("seed", range(4))
def test_token_soup_in_any_pieces_gives_what_the_whole_gives(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 25)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 5)))
        pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        for make in (HERMES, LLAMA3, CALL_ARRAY, NAMED):
            whole = run(make, [text])
            assert same(run(make, pieces), whole), pieces
            assert same(run(make, list(text)), whole), text


def test_hermes_calls_and_content() -> None:
    one = run(HERMES, [HERMES_SAMPLES[0]])
    assert one.content == "" and calls_of(one) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    two = run(HERMES, [HERMES_SAMPLES[1]])
    assert calls_of(two) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert [call.id for call in two.calls] == ["call_0", "call_1"]
    assert two.content == ""  # the newline between the blocks is not content
    around = run(HERMES, [HERMES_SAMPLES[2]])
    assert around.content == "Let me look that up.\n\n\nOne moment."
    assert len(around.calls) == 1


@pytest.mark.parametrize(
    ("text", "arguments"),
    [(HERMES_SAMPLES[3], NESTED_ARGS), (HERMES_SAMPLES[4], TRICKY_ARGS)],
)
def test_hermes_arguments_are_the_models_text(text: str, arguments: str) -> None:
    outcome = run(HERMES, list(text))
    assert outcome.content == "" and [c.arguments for c in outcome.calls] == [arguments]


def test_hermes_unicode_and_late_names_and_string_arguments() -> None:
    unicode = run(HERMES, [HERMES_SAMPLES[5]])
    assert calls_of(unicode) == [("wetter", json.loads(UNICODE_ARGS))]
    assert unicode.content == " ✓"
    late = run(HERMES, list(HERMES_SAMPLES[6]))
    assert calls_of(late) == [("late_name", {"a": [1, 2]})]
    assert late.first_delta_at[0] == HERMES_SAMPLES[6].rindex("}")  # held till its object closes
    string = run(HERMES, [HERMES_SAMPLES[7]])
    assert [c.arguments for c in string.calls] == ['{"a": {"b": 1}}']


@pytest.mark.parametrize("text", HERMES_SAMPLES[8:15])
def test_hermes_blocks_that_are_not_calls_are_content_verbatim(text: str) -> None:
    outcome = run(HERMES, [text])
    if "oops" in text:
        assert outcome.content == "<tool_call>oops " and calls_of(outcome) == [("f", {})]
    else:
        assert outcome.content == text and outcome.calls == []


def test_hermes_whitespace_around_calls_only_is_not_content() -> None:
    spaced = run(HERMES, [HERMES_SAMPLES[22]])
    assert spaced.content == "" and len(spaced.calls) == 1
    assert run(HERMES, [HERMES_SAMPLES[23]]).content == " \n "  # no calls: all of it
    assert run(HERMES, [HERMES_SAMPLES[24]]).content == HERMES_SAMPLES[24]


def test_hermes_partial_tags_and_cut_outputs() -> None:
    parser = HERMES(counting_ids())
    assert parser.feed("a <tool") == [ContentDelta("a ")]
    assert parser.feed("s>") == [ContentDelta("<tools>")]
    assert run(HERMES, [HERMES_SAMPLES[15]]).content == HERMES_SAMPLES[15]
    assert run(HERMES, [HERMES_SAMPLES[16]]).content == HERMES_SAMPLES[16]  # cut before a call
    no_close = run(HERMES, [HERMES_SAMPLES[17]])
    assert calls_of(no_close) == [("f", {"a": 1})] and no_close.content == "\nSure."
    bad_close = run(HERMES, [HERMES_SAMPLES[18]])
    assert calls_of(bad_close) == [("f", {"a": 1})] and bad_close.content == " </tool_cal> x"


def test_hermes_arguments_stream_as_written() -> None:
    text = HERMES_SAMPLES[0]
    parser = HERMES(counting_ids())
    middle = text.index("Paris") + 2
    events = parser.feed(text[:middle])
    assert events == [
        ToolCallDelta(0, "call_0", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": "Pa'),
    ]
    assert parser.calls == []
    assert parser.feed(text[middle:]) == [ToolCallDelta(0, None, None, 'ris", "unit": "celsius"}')]
    assert parser.calls == [
        ToolCall("call_0", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    ]


def test_hermes_call_broken_after_it_began_is_left_out_of_calls() -> None:
    outcome = run(HERMES, [HERMES_SAMPLES[19]])
    assert outcome.streamed == {0: ("call_0", "f", '{"a": tru')} and outcome.calls == []
    assert outcome.content == "}}</tool_call>"  # from the character that broke it
    cut = run(HERMES, ['<tool_call>{"name": "f", "arguments": {"a": 1'])
    assert cut.streamed == {0: ("call_0", "f", '{"a": 1')} and cut.calls == [] and not cut.content


def test_llama3_calls() -> None:
    assert calls_of(run(LLAMA3, [LLAMA3_SAMPLES[0]])) == [("get_weather", {"city": "Paris"})]
    two = run(LLAMA3, [LLAMA3_SAMPLES[1]])
    assert calls_of(two) == [("f", {"a": 1}), ("g", {"b": [2]})] and two.content == ""
    nested = run(LLAMA3, [LLAMA3_SAMPLES[2]])
    assert [c.arguments for c in nested.calls] == [NESTED_ARGS] and nested.content == ""
    assert [c.arguments for c in run(LLAMA3, [LLAMA3_SAMPLES[3]]).calls] == [TRICKY_ARGS]
    assert calls_of(run(LLAMA3, [LLAMA3_SAMPLES[4]])) == [("wetter", json.loads(UNICODE_ARGS))]
    assert calls_of(run(LLAMA3, [LLAMA3_SAMPLES[5]])) == [("late_name", {"a": 1})]
    assert calls_of(run(LLAMA3, [LLAMA3_SAMPLES[6]])) == [("s", {"a": 1})]


def test_llama3_content() -> None:
    parser = LLAMA3(counting_ids())
    assert parser.feed("The") == [ContentDelta("The")]  # streamed at once
    for text in [*LLAMA3_SAMPLES[7:11], *LLAMA3_SAMPLES[15:]]:
        outcome = run(LLAMA3, [text])
        assert outcome.content == text and not outcome.streamed, text
    after = run(LLAMA3, [LLAMA3_SAMPLES[11]])
    assert calls_of(after) == [("f", {})] and after.content == " thanks"
    trailing = run(LLAMA3, [LLAMA3_SAMPLES[12]])
    assert calls_of(trailing) == [("f", {})] and trailing.content == ""
    assert run(LLAMA3, [LLAMA3_SAMPLES[13]]).content == "; nope"
    cut = run(LLAMA3, [LLAMA3_SAMPLES[14]])
    assert cut.calls == [] and cut.streamed == {0: ("call_0", "f", '{"a": 1')}


def test_llama3_arguments_stream_as_written() -> None:
    parser = LLAMA3(counting_ids())
    assert parser.feed('<|python_tag|>{"name": "f", "parameters": {"a"') == [
        ToolCallDelta(0, "call_0", "f", ""),
        ToolCallDelta(0, None, None, '{"a"'),
    ]


def test_call_array() -> None:
    assert calls_of(run(CALL_ARRAY, [CALL_ARRAY_SAMPLES[0]])) == [
        ("get_weather", {"city": "Paris"})
    ]
    two = run(CALL_ARRAY, [CALL_ARRAY_SAMPLES[1]])
    assert [(c.name, c.arguments) for c in two.calls] == [("f", '{"a": 1}'), ("g", NESTED_ARGS)]
    spaced = run(CALL_ARRAY, list(CALL_ARRAY_SAMPLES[2]))
    assert calls_of(spaced) == [("f", {}), ("g", {"x": "]"})]
    assert [c.arguments for c in run(CALL_ARRAY, [CALL_ARRAY_SAMPLES[3]]).calls] == [TRICKY_ARGS]
    for text in CALL_ARRAY_SAMPLES[4:7]:
        assert run(CALL_ARRAY, [text]).calls == [], text
    assert run(CALL_ARRAY, ["[]"]).calls == []
    for text in CALL_ARRAY_SAMPLES:
        assert run(CALL_ARRAY, list(text)).content == "", "never content"


def test_call_array_streams_arguments() -> None:
    parser = CALL_ARRAY(counting_ids())
    assert parser.feed('[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {') == [
        ToolCallDelta(0, "call_0", "f", ""),
        ToolCallDelta(0, None, None, '{"a": 1}'),
        ToolCallDelta(1, "call_1", "g", ""),
        ToolCallDelta(1, None, None, "{"),
    ]


def test_named_arguments() -> None:
    parser = NAMED(counting_ids())
    assert parser.feed('{"city": ') == [
        ToolCallDelta(0, "call_0", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": '),
    ]
    assert parser.feed("") == []
    assert parser.feed('"Paris"}') == [ToolCallDelta(0, None, None, '"Paris"}')]
    assert parser.calls == []
    assert parser.finish() == []
    assert parser.calls == [ToolCall("call_0", "get_weather", '{"city": "Paris"}')]
    cut = run(NAMED, [NAMED_SAMPLES[3]])
    assert cut.calls == [] and cut.streamed == {0: ("call_0", "get_weather", '{"city": "Pa')}
    empty = run(NAMED, [])
    assert empty.calls == [] and empty.streamed == {0: ("call_0", "get_weather", "")}


def test_parser_for_needs_a_name_for_named_arguments() -> None:
    with pytest.raises(ValueError, match="named_arguments"):
        parser_for(ToolCallFormat.NAMED_ARGUMENTS, new_call_id)


def test_new_call_ids_are_openai_shaped_and_unique() -> None:
    ids = [new_call_id() for _ in range(1000)]
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", call_id) for call_id in ids)
    assert len(set(ids)) == len(ids)
