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

Asking for the forced tokens costs a tokenization of the forced bytes (~10-25 us), about 30
times a step of 64 sequences along the benchmark's schema: ~0.8 ms a step on a 2-core
machine, on the engine's thread, which is the step's critical path. So a sequence on a mask
worker has its mirror find them (`MaskRow.room`), before its mask and in parallel with the
other workers', and the engine takes them from the reply (`MaskWorkers.take_forced`, which
waits for it) and patches them into the step's outputs; the engine's thread forces only the
sequences no worker answered for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llguidance import LLMatcher


def take(grammar: LLMatcher, token_id: int) -> bool:
    """The grammar consumes a sampled token; whether it is then complete (or refused it: the
    sampler keeps to the mask, so never one it was given), ending the sequence as at a stop."""
    return not grammar.consume_token(token_id) or grammar.is_stopped()


def force(grammar: LLMatcher, room: int) -> list[int]:
    """The tokens the grammar forces now, at most `room`, consumed by it."""
    # The forced bytes are cheap to ask for (~2 us); their tokens cost a tokenization, so only
    # where there are bytes.
    if room <= 0 or grammar.is_stopped() or not grammar.compute_ff_bytes():
        return []
    forced = grammar.compute_ff_tokens()[:room]
    if not forced:
        return []
    # It accepts its own forced tokens; were one refused, the sequence would take those before
    # it and sample on from there.
    return forced[: grammar.try_consume_tokens(forced)]
