"""How long the server takes to turn an OpenAI request body (bytes) into its typed request.

Times exactly what `/v1/chat/completions` and `/v1/completions` do before the chat template
and the tokenizer: JSON decoding, field checks, `SamplingParams`. Each case runs in rounds of
about 0.2 s; the table shows the median and the best round's time per body.

    python scripts/bench_request_parsing.py
    python scripts/bench_request_parsing.py --rounds 15 --case short_chat

It times whichever parsing functions it imports, so the code before the msgspec bodies can be
timed by the same script: `git archive 078699c src | tar -x -C /tmp/before` and run it with
`PYTHONPATH=/tmp/before/src`, alternating with the current tree on the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

MAX_CHOICES = 16
TEXT = (
    "The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his "
    "father had, and lit the lamp that swept the dark water for ships he would never meet. "
)


def _chat(messages: list[dict[str, object]], **fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": messages, **fields}).encode()


def _completion(prompt: object, **fields: object) -> bytes:
    return json.dumps({"model": "m", "prompt": prompt, **fields}).encode()


def cases() -> dict[str, tuple[str, bytes]]:
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": TEXT[: 60 + i % 120]}
        for i in range(200)
    ]
    parts = [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT[:40]}]
    return {
        "short_chat": (
            "chat",
            _chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=64),
        ),
        "chat_200_messages": (
            "chat",
            _chat([{"role": "system", "content": "Be brief."}, *turns], max_tokens=256),
        ),
        "chat_content_parts": (
            "chat",
            _chat([{"role": "user", "content": parts}] * 8, max_completion_tokens=32),
        ),
        "chat_100k_prompt": (
            "chat",
            _chat([{"role": "user", "content": (TEXT * 600)[:100_000]}], max_tokens=16),
        ),
        "stream_sampling_fields": (
            "chat",
            _chat(
                [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": TEXT}],
                stream=True,
                stream_options={"include_usage": True},
                max_completion_tokens=128,
                temperature=0.7,
                top_p=0.9,
                top_k=40,
                min_p=0.05,
                presence_penalty=0.5,
                frequency_penalty=0.25,
                repetition_penalty=1.1,
                seed=1234,
                stop=["\n\n", "User:"],
                n=2,
                logprobs=True,
                top_logprobs=5,
                user="alice",
            ),
        ),
        "completion_4096_ids": ("completion", _completion(list(range(4096)), max_tokens=16)),
        "completion_8x512_ids": (
            "completion",
            _completion([list(range(i, i + 512)) for i in range(8)], max_tokens=16),
        ),
        "completion_text": ("completion", _completion(TEXT, max_tokens=16, temperature=0.2)),
        "chat_110k_empty_messages": (
            "chat",
            _chat([{"role": "user", "content": ""}] * 110_000, max_tokens=1),
        ),
    }


def parsers() -> dict[str, Callable[[bytes], object]]:
    """Body bytes -> typed request, through this checkout's parsing functions."""
    from ember.serve import openai_requests

    try:  # up to 078699c, before the msgspec bodies: dicts from json.loads, field by field
        from ember.serve.request_fields import parse_json_object
    except ImportError:
        return {
            "chat": lambda body: openai_requests.parse_chat_request(body, MAX_CHOICES),
            "completion": lambda body: openai_requests.parse_completion_request(body, MAX_CHOICES),
        }

    def chat(body: bytes) -> object:
        fields = parse_json_object(body)
        openai_requests.parse_model(fields)
        return openai_requests.parse_chat_request(fields, MAX_CHOICES)

    def completion(body: bytes) -> object:
        fields = parse_json_object(body)
        openai_requests.parse_model(fields)
        return openai_requests.parse_completion_request(fields, MAX_CHOICES)

    return {"chat": chat, "completion": completion}


def time_case(parse: Callable[[bytes], object], body: bytes, rounds: int) -> list[float]:
    """Seconds per parse, one figure per round of about 0.2 s."""
    start = time.perf_counter()
    parse(body)
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(0.2 / once))
    figures = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            parse(body)
        figures.append((time.perf_counter() - start) / calls)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--case", action="append", help="run only these cases (repeatable)")
    args = parser.parse_args()
    parse = parsers()
    print(f"{'case':<26} {'bytes':>9} {'median us':>11} {'best us':>11}")
    for name, (kind, body) in cases().items():
        if args.case and name not in args.case:
            continue
        figures = time_case(parse[kind], body, args.rounds)
        median, best = statistics.median(figures) * 1e6, min(figures) * 1e6
        print(f"{name:<26} {len(body):>9} {median:>11.1f} {best:>11.1f}")


if __name__ == "__main__":
    main()
