"""What a constrained request's output must match: a JSON schema, any JSON object, a regular
expression, one of a list of strings, or a Lark grammar.

A `StructuredOutput` is part of `SamplingParams`: plain data that crosses the worker protocol.
`grammar()` turns it into llguidance's grammar text (the grammar engine, Rust, used by
llama.cpp and vLLM); `engine/grammar.py` compiles that against the model's tokenizer and keeps
a matcher per sequence. The spec keeps the caller's own text (the schema as sent), so the
compile cache is keyed by what the caller wrote.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.errors import StructuredOutputError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Bigger specs are refused before compiling: a 64 KiB schema is far beyond what tool and
# response schemas are (a few KiB), and compile time and memory grow with the grammar's size.
MAX_SPEC_BYTES = 65536
MAX_CHOICES = 1024


class StructuredKind(enum.StrEnum):
    JSON_SCHEMA = "json_schema"  # spec: the schema as JSON text
    JSON_OBJECT = "json_object"  # spec: unused ("")
    REGEX = "regex"  # spec: the expression
    CHOICE = "choice"  # spec: a JSON array of the strings
    GRAMMAR = "grammar"  # spec: a Lark grammar (llguidance's dialect)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    kind: StructuredKind
    spec: str = ""
    # The request field it came from, for errors (`response_format`, `guided_json`...).
    param: str = "response_format"

    def __post_init__(self) -> None:
        size = len(self.spec.encode("utf-8", "surrogatepass"))
        if size > MAX_SPEC_BYTES:
            raise StructuredOutputError(
                f"'{self.param}' is {size} bytes; this server compiles at most "
                f"{MAX_SPEC_BYTES} bytes of schema or grammar",
                param=self.param,
            )

    @classmethod
    def json_schema(cls, schema: object, param: str = "response_format") -> StructuredOutput:
        if not isinstance(schema, dict | bool):
            raise StructuredOutputError(
                f"'{param}' must hold a JSON schema (an object), got {type(schema).__name__}",
                param=param,
            )
        return cls(StructuredKind.JSON_SCHEMA, json.dumps(schema, ensure_ascii=False), param)

    @classmethod
    def choice(cls, choices: object, param: str = "guided_choice") -> StructuredOutput:
        if (
            not isinstance(choices, list)
            or not choices
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise StructuredOutputError(
                f"'{param}' must be a non-empty array of non-empty strings", param=param
            )
        if len(choices) > MAX_CHOICES:
            raise StructuredOutputError(
                f"'{param}' has {len(choices)} choices; at most {MAX_CHOICES}", param=param
            )
        return cls(StructuredKind.CHOICE, json.dumps(choices, ensure_ascii=False), param)

    def grammar(self) -> str:
        """llguidance's grammar text for this spec (not yet checked: compiling checks it)."""
        from llguidance import LLMatcher

        kind = self.kind
        if kind is StructuredKind.JSON_SCHEMA:
            return LLMatcher.grammar_from_json_schema(self.spec, defaults=_JSON_OPTIONS)
        if kind is StructuredKind.JSON_OBJECT:
            return LLMatcher.grammar_from_json_schema('{"type": "object"}', defaults=_JSON_OPTIONS)
        if kind is StructuredKind.REGEX:
            return LLMatcher.grammar_from_regex(self.spec)
        if kind is StructuredKind.CHOICE:
            alternatives = " | ".join(json.dumps(c) for c in json.loads(self.spec))
            return LLMatcher.grammar_from_lark(f"start: {alternatives}")
        return LLMatcher.grammar_from_lark(self.spec)


# Compact JSON with any whitespace allowed between tokens would let a small model pad with
# newlines until max_tokens; OpenAI's outputs are compact JSON with ", " and ": " separators.
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
