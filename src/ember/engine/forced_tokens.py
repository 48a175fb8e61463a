"""A constrained sequence's sampled token through its grammar, and the tokens the grammar then
forces (jump-forward decoding).

After a token, a grammar often allows only one text for a while: the rest of a JSON key, the
`": "` after it, the next field's name of a schema's fixed order, the end of an enum value. The
sequence takes that text's tokens without sampling them (llguidance's fast-forward tokens: the
canonical tokenization of the forced bytes, less any last token that a longer one could
extend), and the next step computes them all, as a prefill chunk, and samples the token after
them. On the benchmark's JSON schema about three output tokens in five are forced.

The output is then the forced text's canonical tokens, where sampling one token at a time may
pick another split of the same text (`"` then `name` rather than `"name`): the same text, and
the split the model was trained on. A sequence that asks for logprobs samples every token, so
that each has its entry.

With a step in flight (asynchronous scheduling), the sequence's row of that step was launched
before the forced tokens were known: it computes the sampled token's K/V, and its own sample
is dropped (`LaunchedStep.dropped`); the forced tokens follow in the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llguidance import LLMatcher

NO_TOKENS: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GrammarStep:
    """What a sampled token did to its sequence's grammar."""

    # Tokens the grammar forces after it, already consumed by the grammar (at most `room`).
    forced: tuple[int, ...]
    # The grammar is complete after them (or refused the token: the sampler keeps to the mask,
    # so never one it was given): the sequence ends as at a stop.
    complete: bool


def take_token(grammar: LLMatcher, token_id: int, room: int) -> GrammarStep:
    """The grammar consumes `token_id` and, where `room` > 0, then up to `room` forced tokens."""
    if not grammar.consume_token(token_id) or grammar.is_stopped():
        return GrammarStep(NO_TOKENS, True)
    # The forced bytes are cheap to ask for (~2 us); their tokens cost a tokenization (~10 us),
    # so only where there are bytes.
    if room <= 0 or not grammar.compute_ff_bytes():
        return GrammarStep(NO_TOKENS, False)
    forced = grammar.compute_ff_tokens()[:room]
    if not forced:
        return GrammarStep(NO_TOKENS, False)
    # It accepts its own forced tokens; were one refused, the sequence would take those before
    # it and sample on from there.
    taken = grammar.try_consume_tokens(forced)
    return GrammarStep(tuple(forced[:taken]), grammar.is_stopped())
