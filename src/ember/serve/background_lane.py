"""The event loop's lane for background service classes' work.

asyncio runs, in each iteration of its loop, every callback that was ready when the iteration
began, first come first served. Under a flood of batch streams the server's loop is saturated
(85 thousand tok/s on an H100: 256 streams' chunks, and their requests arriving and finishing
in waves of hundreds when their lengths match), and an interactive request's arrival, its
first token or its next chunk waits behind a whole wave: 50-160 ms at p99 on the GPU, against
5-13 ms alone. Priority in the engine cannot shorten that queue.

So the server-side work of a background class (`ServiceClass.background`, the batch class by
default) goes through this lane: its requests wait for a turn after their key is checked and
before their body is parsed, templated and tokenized, and its streams' wake-ups (chunks,
first tokens, finishes) are queued here. The lane releases `per_iteration` items per loop
iteration, then yields: each iteration holds at most that much background work besides
everything else that is ready, so other classes' work waits for a few items, not a wave. When
the loop has nothing else to do, iterations are short and the lane drains at nearly full speed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

# Items per loop iteration: a background stream's wake-up is one chunk (~0.1 ms of JSON and a
# socket write), a request's turn its parsing and tokenization (~0.5 ms); 4 keep an iteration's
# background share near a millisecond, while a drain costs one extra loop iteration (a select
# with no timeout, microseconds) per 4 items.
DEFAULT_PER_ITERATION: Final = 4


class BackgroundLane:
    def __init__(self, per_iteration: int = DEFAULT_PER_ITERATION) -> None:
        if per_iteration < 1:
            raise ValueError(f"a lane releases at least 1 item per iteration, not {per_iteration}")
        self.per_iteration = per_iteration
        self._pending: deque[Callable[[], None]] = deque()
        self._draining = False

    @property
    def pending(self) -> int:
        """Items waiting for their iteration."""
        return len(self._pending)

    def run(self, work: Callable[[], None]) -> None:
        """Call `work` (quick: it should only wake a task) in a later loop iteration, in
        arrival order, at most `per_iteration` items an iteration."""
        self._pending.append(work)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    async def turn(self) -> None:
        """Wait for this task's turn in the lane."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def release() -> None:
            if not future.done():  # cancelled while it waited: the client went away
                future.set_result(None)

        self.run(release)
        await future

    def _drain(self) -> None:
        pending = self._pending
        try:
            for _ in range(min(self.per_iteration, len(pending))):
                pending.popleft()()
        finally:  # an item that raised must not stop the lane
            if pending:  # the rest in the next iteration, after what became ready meanwhile
                asyncio.get_running_loop().call_soon(self._drain)
            else:
                self._draining = False
