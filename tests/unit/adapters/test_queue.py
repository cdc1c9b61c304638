"""The planner's queue over the work queue: batches, urgency, exclusion, trigger times.

Covers: keys marked together come out as one batch of at most `chunk`; before the world is
synced marks wait in the background lane, which is fed a chunk at a time; an urgent key never
waits behind more than one background chunk; a key being processed is not handed out again
until done, and then once more if it was marked meanwhile; the trigger time is the first mark.
Not covered: planning and execution (test_controller.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sod_operator.adapters.queue import PlanQueue
from sod_operator.kube.workqueue import WorkQueue

NS = "tenant"


def keys(*names: str) -> list[tuple[str, str]]:
    return [(NS, n) for n in names]


def with_queue(chunk: int, body: Callable[[PlanQueue], Awaitable[None]]) -> None:
    async def go() -> None:
        q = PlanQueue(WorkQueue(), chunk, clock=iter(range(1000)).__next__)
        collector = asyncio.get_running_loop().create_task(q.collect())
        try:
            await body(q)
        finally:
            q.shutdown()
            await collector

    asyncio.run(go())


def test_keys_marked_together_are_one_batch_of_at_most_chunk():
    async def body(q: PlanQueue) -> None:
        q.open()
        q.mark(keys("a", "b", "c"))
        assert await q.next_batch() == keys("a", "b")
        assert await q.next_batch() == keys("c")

    with_queue(2, body)


def test_background_is_fed_a_chunk_at_a_time_and_urgent_keys_do_not_wait_behind_it():
    async def body(q: PlanQueue) -> None:
        q.mark(keys("s1", "s2", "s3", "s4"))  # the start-up listing: background
        q.open()
        assert await q.next_batch() == keys("s1", "s2")
        q.mark(keys("urgent"))
        assert await q.next_batch() == keys("urgent")
        assert await q.next_batch() == keys("s3", "s4")

    with_queue(2, body)


def test_a_key_in_process_is_handed_out_again_only_after_done():
    async def body(q: PlanQueue) -> None:
        q.open()
        q.mark(keys("a"))
        assert await q.next_batch() == keys("a")
        q.mark(keys("a", "b"))  # "a" is being executed
        assert await q.next_batch() == keys("b")
        q.done((NS, "a"))
        assert await q.next_batch() == keys("a")
        assert q.depth() == 2  # a and b are still in process

    with_queue(10, body)


def test_trigger_time_is_the_first_mark_until_settled():
    async def body(q: PlanQueue) -> None:
        q.open()
        q.mark(keys("a"))
        q.mark(keys("a"))
        assert q.since((NS, "a")) == 0
        q.settled((NS, "a"))
        assert q.since((NS, "a")) is None

    with_queue(10, body)
