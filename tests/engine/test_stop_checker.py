"""StopChecker: stop tokens, stop strings and max_tokens, decided one token at a time."""

from __future__ import annotations

from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.engine.stop_checker import StopChecker
from ember.model.loader import LoadedModel


def test_max_tokens_ends_with_length(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    ids = tokenizer.encode("hello world again")
    checker = StopChecker(SamplingParams(max_tokens=3, ignore_eos=True), tokenizer, with_text=True)
    reasons = [checker.accept(t) for t in ids[:3]]
    assert reasons == [None, None, FinishReason.LENGTH] and checker.num_tokens == 3
    assert checker.text is not None and checker.text.take_delta(final=True) == tokenizer.decode(
        ids[:3]
    )


def test_stop_tokens_end_with_stop_and_add_no_text(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    eos = next(iter(tokenizer.stop_ids))
    word = tokenizer.encode("hello")
    checker = StopChecker(SamplingParams(max_tokens=10), tokenizer, with_text=True)
    assert [checker.accept(t) for t in [*word, eos]][-1] is FinishReason.STOP
    assert checker.text is not None and checker.text.take_delta(final=True) == "hello"
    # ignore_eos: the tokenizer's stop ids no longer stop; stop_token_ids still do.
    params = SamplingParams(max_tokens=10, ignore_eos=True, stop_token_ids=[word[0]])
    checker = StopChecker(params, tokenizer, with_text=False)
    assert checker.accept(eos) is None and checker.accept(word[0]) is FinishReason.STOP
    assert checker.text is None


def test_a_stop_string_ends_with_stop_and_cuts_the_text(tiny_model: LoadedModel) -> None:
    tokenizer = tiny_model.tokenizer
    ids = tokenizer.encode("one two three four")
    params = SamplingParams(max_tokens=50, stop=["three"], ignore_eos=True)
    checker = StopChecker(params, tokenizer, with_text=True)
    reason = None
    for token_id in ids:
        reason = checker.accept(token_id)
        if reason is not None:
            break
    assert reason is FinishReason.STOP and checker.num_tokens < len(ids)
    assert checker.text is not None and checker.text.take_delta(final=True) == "one two "
    # Without text (a worker whose server holds it) stop strings are not seen.
    checker = StopChecker(params, tokenizer, with_text=False)
    assert [checker.accept(t) for t in ids] == [None] * len(ids)
