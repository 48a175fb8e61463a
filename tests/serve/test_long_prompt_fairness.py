"""A long prompt being prefilled does not hold a short request back for its whole length."""

from __future__ import annotations

import asyncio
import time

from tests.serve.running_server import MODEL, RunningServer

# ~1,500 tokens: 24 prefill steps of the CPU's 64-token prefill budget, seconds on CI.
LONG_PROMPT = "The lighthouse keeper counted the steps again. " * 170


def test_a_short_request_finishes_while_a_long_prompt_is_still_prefilling(
    server: RunningServer,
) -> None:
    async def run() -> tuple[float, float, float]:
        async with server.async_client() as client:
            started = time.perf_counter()
            long = asyncio.create_task(
                client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=1)
            )
            await asyncio.sleep(0.5)  # the long prompt is admitted and prefilling
            sent = time.perf_counter()
            short = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
            short_done = time.perf_counter()
            assert short.choices[0].text
            response = await long
            assert response.usage is not None and response.usage.prompt_tokens > 1_000
            return short_done - sent, short_done - started, time.perf_counter() - started

    short_seconds, short_done_at, long_done_at = asyncio.run(run())
    # Before, the long prompt took the step's whole token budget until its prefill ended, and
    # the short request finished with it.
    assert short_done_at < long_done_at, (short_seconds, short_done_at, long_done_at)
    assert long_done_at - short_done_at > 0.3 * long_done_at, (short_done_at, long_done_at)
