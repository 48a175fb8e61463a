"""Stream handlers wake at most once per stream interval, however often the engine steps: the
tokens in between reach them together, so they go out as one chunk."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ember.engine.engine_stats import EngineStats
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import FinishReason
from ember.engine.sequence_limits import SequenceLimits
from ember.model.tokenizer import Tokenizer
from ember.serve.config import ServerConfig
from ember.serve.engine_client import EngineClient
from ember.serve.generation import ChoiceDelta, GenerationRequest
from ember.serve.metrics import ServerMetrics, TokenHistogram
from ember.serve.served_model import ServedModel
from ember.serve.worker_protocol import ServerMessage, StepReport, WorkerReady

STATS = EngineStats(1, 0, 0.1, 1000, 0, 0, 0, 1, 1)


class DiscardingLink:
    def send(self, message: ServerMessage) -> None:
        pass


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return ServedModel.load(None).tokenizer


def stream_deltas(
    tokenizer: Tokenizer, interval: float, schedule: list[float], tokens: list[int] | None = None
) -> tuple[list[ChoiceDelta], str]:
    """Feed one streamed request a token per entry of `schedule` (seconds to wait before it,
    0: only let the handler run if it was woken; the last one finishes the request) and return
    what its handler took at each wake-up."""

    if tokens is None:
        tokens = tokenizer.encode(" The keeper climbed the stairs and lit the lamp at dusk")

    async def run() -> tuple[list[ChoiceDelta], str]:
        client = EngineClient(
            ServerConfig(stream_interval=interval, request_timeout=None),
            ServerMetrics("m", 8192),
        )
        client.attach(
            DiscardingLink(), WorkerReady(1, "test", SequenceLimits(49152, 8192, 1000, 16), 0.0)
        )
        request = GenerationRequest("r", None)
        choice = request.add_choice([1, 2], SamplingParams(max_tokens=64), tokenizer)
        client.submit(request)
        deltas: list[ChoiceDelta] = []

        async def handler() -> None:
            while not request.finished:
                await request.wait()
                delta = choice.take()
                if delta is not None:
                    deltas.append(delta)

        task = asyncio.create_task(handler())
        for i, wait in enumerate(schedule):
            await asyncio.sleep(wait)
            finish = FinishReason.LENGTH if i == len(schedule) - 1 else None
            report = StepReport([(choice.request_id, [tokens[i]], None, finish)], [], STATS)
            client.on_message(report)
        await asyncio.wait_for(task, 10)
        return deltas, tokenizer.decode(tokens[: len(schedule)], skip_special_tokens=True)

    return asyncio.run(run())


def test_tokens_within_the_interval_reach_the_handler_together(tokenizer: Tokenizer) -> None:
    # A first token wakes the handler at once; so does the second here, as no stream has been
    # woken for a whole interval (1 s). The next three wait for the interval to end and go
    # together. Of the last two, the finish wakes the handler at once.
    schedule = [0.0] * 5 + [1.5, 0.0]
    deltas, text = stream_deltas(tokenizer, 1.0, schedule)
    assert [d.num_tokens for d in deltas] == [1, 1, 3, 2]
    assert [d.finish_reason for d in deltas] == [None, None, None, "length"]
    assert "".join(d.text for d in deltas) == text


def test_interval_zero_wakes_the_handler_every_step(tokenizer: Tokenizer) -> None:
    deltas, text = stream_deltas(tokenizer, 0.0, [0.0] * 6)
    assert [d.num_tokens for d in deltas] == [1] * 6
    assert "".join(d.text for d in deltas) == text


def test_token_histogram_exposes_what_prometheus_histogram_does() -> None:
    buckets = (0.01, 0.025, 0.5, 1.0, 10.0)
    values = [0.0, 0.01, 0.0100001, 0.3, 0.5, 1.0, 7.0, 10.0, 11.0, 1e9]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = TokenHistogram("x:itl_seconds", "Doc.", {"model_name": "m"}, buckets, ours)
    reference = Histogram("x:itl_seconds", "Doc.", ("model_name",), buckets=buckets,
                          registry=theirs).labels("m")  # fmt: skip
    for value in values:
        histogram.observe(value)
        reference.observe(value)

    def samples(registry: CollectorRegistry) -> list[str]:
        lines = generate_latest(registry).decode().splitlines()
        return [
            line for line in lines if line.startswith("x:itl_seconds_") and "_created" not in line
        ]

    assert samples(ours) == samples(theirs)
    assert len(samples(ours)) == len(buckets) + 3  # the buckets, +Inf, _count, _sum


def test_the_first_text_does_not_wait_for_the_interval(tokenizer: Tokenizer) -> None:
    # An instruct model's first tokens may have no text (here two special tokens, as SmolLM2
    # ends a plain prompt with <|im_end|> and starts a turn): each still wakes the handler at
    # once, and so does the token that brings the first text, so it goes out alone rather than
    # with the tokens of the next interval (1 s away).
    start = tokenizer.encode("<|im_start|>")
    assert len(start) == 1 and tokenizer.decode(start, skip_special_tokens=True) == ""
    tokens = start * 2 + tokenizer.encode(" The keeper climbed the stairs")
    deltas, text = stream_deltas(tokenizer, 1.0, [0.0] * 6, tokens)
    texts = [d.text for d in deltas]
    first_text = next(i for i, t in enumerate(texts) if t)
    assert deltas[first_text].num_tokens == 1 and texts[first_text] == " The"
    assert "".join(texts) == text
