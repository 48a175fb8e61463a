"""Per-request sampling parameters, validated on construction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ember.engine.structured_output import StructuredOutput
from ember.errors import SamplingParamsError

MAX_LOGPROBS = 20
# A temperature below this samples as greedy: logits / 1e-40 overflows float32 to inf (and a
# positive float64 below 1.4e-45 is 0 in float32), and so close to 0 sampling is argmax anyway.
# vLLM's _SAMPLING_EPS is the same.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop. `temperature=0` (or below 1e-5) means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0 (or -1) disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: no logprobs; N: the chosen token plus the top N
    skip_special_tokens: bool = True
    # What the output must match (a JSON schema, a regex...); None: free text.
    structured: StructuredOutput | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        self._validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def _validate(self) -> None:
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_number("temperature", self.temperature, low=0.0, high=100.0)
        _check_int("top_k", self.top_k, low=0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_number("min_p", self.min_p, low=0.0, high=1.0)
        _check_number(
            "repetition_penalty", self.repetition_penalty, low=0.0, high=100.0, low_open=True
        )
        _check_number("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_number("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS)
        _check_strings("stop", self.stop)
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, low=0)


def _check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise SamplingParamsError(f"{name} must be {bound}, got {value}")


def _check_number(
    name: str, value: object, *, low: float, high: float, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SamplingParamsError(f"{name} must be a number, got {value!r}")
    if value != value or (value <= low if low_open else value < low) or value > high:
        opening = "(" if low_open else "["
        raise SamplingParamsError(f"{name} must be in {opening}{low}, {high}], got {value}")


def _check_strings(name: str, values: Sequence[object]) -> None:
    for value in values:
        if not isinstance(value, str) or not value:
            raise SamplingParamsError(f"{name} entries must be non-empty strings, got {value!r}")
