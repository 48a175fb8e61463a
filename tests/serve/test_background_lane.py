"""The lane for background classes' server work: a bounded share of each event-loop iteration,
in arrival order, so that other work ready meanwhile runs between its items."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ember.serve.background_lane import BackgroundLane
from ember.serve.generation import GenerationRequest


async def _foreground(log: list[str], iterations: int) -> None:
    for _ in range(iterations):
        log.append("fg")
        await asyncio.sleep(0)  # one loop iteration


def test_a_wave_of_background_work_leaves_each_iteration_to_other_work() -> None:
    async def scenario() -> list[str]:
        lane = BackgroundLane(per_iteration=3)
        log: list[str] = []
        for i in range(30):  # a wave: 30 items queued at once
            lane.run(lambda i=i: log.append(f"bg{i}"))
        await _foreground(log, 5)
        while lane.pending:
            await asyncio.sleep(0)
        return log

    log = asyncio.run(scenario())
    assert [entry for entry in log if entry != "fg"] == [f"bg{i}" for i in range(30)]
    # The foreground task ran five times before the wave was through, with at most 3
    # background items between two of its turns.
    fg = [i for i, entry in enumerate(log) if entry == "fg"]
    assert len(fg) == 5 and fg[-1] < log.index("bg29")
    assert all(b - a - 1 <= 3 for a, b in itertools.pairwise(fg))


def test_turns_are_taken_in_arrival_order_and_a_cancelled_waiter_gives_its_turn_up() -> None:
    async def scenario() -> list[int]:
        lane = BackgroundLane(per_iteration=2)
        order: list[int] = []

        async def request(number: int) -> None:
            await lane.turn()
            order.append(number)

        tasks = [asyncio.create_task(request(n)) for n in range(7)]
        await asyncio.sleep(0)  # every task waits for its turn
        tasks[3].cancel()  # its client went away
        await asyncio.gather(*tasks, return_exceptions=True)
        assert lane.pending == 0
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 4, 5, 6]


def test_an_item_that_raises_does_not_stop_the_lane() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
        lane = BackgroundLane(per_iteration=1)
        done: list[int] = []

        def broken() -> None:
            raise RuntimeError("broken item")

        lane.run(broken)
        lane.run(lambda: done.append(1))
        await lane.turn()
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        return done

    assert asyncio.run(scenario()) == [1]


def test_a_background_request_wakes_in_its_turn_once_however_often_it_is_woken() -> None:
    async def scenario() -> None:
        lane = BackgroundLane(per_iteration=1)
        request = GenerationRequest("chatcmpl-1", None)
        request.lane = lane
        waiting = asyncio.create_task(request.wait())
        await asyncio.sleep(0)
        for _ in range(5):  # tokens, a flush, a finish: one turn takes them all
            request.wake()
        assert lane.pending == 1 and not waiting.done()
        await waiting
        assert lane.pending == 0

    asyncio.run(scenario())


def test_a_lane_releases_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BackgroundLane(per_iteration=0)
