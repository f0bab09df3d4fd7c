"""The operator's requeue: a failed pass backs off exponentially up to a cap, and its tables hold only what is
pending, however many objects came and went."""

from __future__ import annotations

import asyncio

from labkeeper.controller.main import RETRY_CAP, RETRY_FIRST, Requeue


def test_a_failing_pass_backs_off_exponentially_up_to_the_cap_and_starts_over_after_a_success():
    async def scenario() -> list[float]:
        requeue = Requeue()
        key = ("Workspace", "lab-alice/nb")
        delays = [requeue.retry(key, lambda: None) for _ in range(10)]
        requeue.succeeded(key)
        delays.append(requeue.retry(key, lambda: None))
        requeue.cancel_all()
        return delays

    delays = asyncio.run(scenario())
    assert delays[:4] == [RETRY_FIRST, 2 * RETRY_FIRST, 4 * RETRY_FIRST, 8 * RETRY_FIRST]
    assert max(delays) == RETRY_CAP and delays[9] == RETRY_CAP
    assert delays[10] == RETRY_FIRST  # a success resets the count


def test_the_tables_do_not_grow_with_the_objects_that_came_and_went():
    async def scenario() -> tuple[int, int]:
        requeue = Requeue(wall=lambda seconds: 0.0)
        fired: list[str] = []

        async def one_pass(name: str) -> None:
            key = ("user", f"lab-{name}")
            async with requeue.lock(key):
                await asyncio.sleep(0)
            requeue.schedule(("Workspace", name), 0.0, lambda n=name: fired.append(n))  # type: ignore[misc]

        await asyncio.gather(*(one_pass(f"u{i}") for i in range(2000)))
        for _ in range(100):  # until every timer fired
            if len(fired) == 2000:
                break
            await asyncio.sleep(0.01)
        return len(fired), len(requeue)

    fired, left = asyncio.run(scenario())
    assert fired == 2000 and left == 0  # 2000 locks taken and 2000 timers fired leave nothing behind


def test_a_lock_is_shared_by_those_waiting_for_it_and_dropped_by_the_last():
    async def scenario() -> tuple[list[str], int]:
        requeue = Requeue()
        order: list[str] = []

        async def holder(name: str) -> None:
            async with requeue.lock(("user", "lab-alice")):
                order.append(f"{name} in")
                await asyncio.sleep(0.01)
                order.append(f"{name} out")

        await asyncio.gather(holder("a"), holder("b"))
        return order, len(requeue)

    order, left = asyncio.run(scenario())
    assert order == ["a in", "a out", "b in", "b out"]  # one at a time for one key
    assert left == 0
