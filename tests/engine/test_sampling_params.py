from __future__ import annotations

import pytest

from ember import SamplingParams, SamplingParamsError


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("max_tokens", 0, "max_tokens must be >= 1"),
        ("max_tokens", 2.5, "max_tokens must be an integer"),
        ("temperature", -0.1, "temperature must be in"),
        ("temperature", float("nan"), "temperature must be in"),
        ("temperature", "hot", "temperature must be a number"),
        ("top_p", 0.0, "top_p must be in (0.0, 1.0]"),
        ("top_p", 1.5, "top_p"),
        ("top_k", -3, "top_k must be >= 0"),
        ("min_p", 2.0, "min_p"),
        ("repetition_penalty", 0.0, "repetition_penalty"),
        ("presence_penalty", 3.0, "presence_penalty must be in [-2.0, 2.0]"),
        ("frequency_penalty", -2.5, "frequency_penalty"),
        ("seed", -1, "seed must be between"),
        ("logprobs", 21, "logprobs must be between 0 and 20"),
        ("stop", [""], "stop entries must be non-empty strings"),
        ("stop", [3], "stop entries"),
        ("stop_token_ids", [-1], "stop_token_ids"),
    ],
)
def test_invalid_parameters_raise_value_error_with_message(
    field: str, value: object, words: str
) -> None:
    with pytest.raises(SamplingParamsError, match=None) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


def test_normalization() -> None:
    p = SamplingParams(stop="END", stop_token_ids=[5], top_k=-1)  # type: ignore[arg-type]
    assert p.stop == ("END",) and p.stop_token_ids == (5,) and p.top_k == 0
    assert SamplingParams(temperature=0).greedy
