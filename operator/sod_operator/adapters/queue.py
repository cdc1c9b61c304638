"""The planner's queue: SecureVM keys to plan, in batches, urgent first, over a `WorkQueue`.

The work queue (`sod_operator.kube.workqueue`, client-go's semantics) gives what the
controller relies on: a key is never handed out twice at once (a key marked while it is being
planned or executed is handed out again after `done`), delayed re-plans keep the earliest, and
a failed plan backs off per key. On top of it this module adds:

* **batches**: every key the work queue has ready is collected, and up to `chunk` are planned
  together (the fleet planner allocates migration slots across them: most sensitive first);
* **urgency**: keys of the start-up listing and of the periodic resync go to a background lane
  that is fed into the work queue a chunk at a time, only when nothing else is ready, so a
  revocation never waits behind 20,000 start-up plans (at most behind one chunk);
* **trigger time**: when a key was first marked since it last settled (the reaction metric
  counts from there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from itertools import islice

from sod_operator.kube.workqueue import WorkQueue
from sod_operator.policy.world import Key


class PlanQueue:
    def __init__(
        self, queue: WorkQueue[Key], chunk: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._queue = queue
        self._chunk = chunk
        self._clock = clock
        self._urgent_open = False
        self._background: dict[Key, None] = {}
        self._got: dict[Key, None] = {}
        """Keys the work queue handed out, not yet taken into a batch."""
        self._processing: set[Key] = set()
        self._announced: set[Key] = set()
        """Urgent keys added to the work queue and not handed out yet: the background lane
        waits for them."""
        self._t0: dict[Key, float] = {}
        self._wake = asyncio.Event()

    def open(self) -> None:
        """The world is synced: from now on marks are urgent."""
        self._urgent_open = True
        self._wake.set()

    def mark(self, keys: Iterable[Key], urgent: bool = True) -> None:
        now = self._clock()
        for key in keys:
            self._t0.setdefault(key, now)
            if urgent and self._urgent_open:
                self._background.pop(key, None)
                self._announced.add(key)
                self._queue.add(key)
            else:
                self._background.setdefault(key, None)
        self._wake.set()

    def later(self, key: Key, delay: float) -> None:
        self._queue.add_after(key, delay)

    def retry(self, key: Key) -> None:
        """Plan the key again after its back-off (it failed)."""
        self._queue.add_rate_limited(key)

    def succeeded(self, key: Key) -> None:
        self._queue.forget(key)

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        self._queue.done(key)

    def pending(self, key: Key) -> bool:
        """Marked and not yet taken into a batch (`collect` drains the work queue at once)."""
        return key in self._background or key in self._got or key in self._announced

    def since(self, key: Key) -> float | None:
        """When the key was first marked since it last settled."""
        return self._t0.get(key)

    def settled(self, key: Key) -> None:
        self._t0.pop(key, None)

    def depth(self) -> int:
        return len(self._processing) + len(self._background)

    async def collect(self) -> None:
        """Move what the work queue hands out into the next batch (run as a task). It waits in
        a thread (`aget`); whatever else is due then is taken at once, so the keys one event
        marked stay one batch."""
        while (key := await self._queue.aget()) is not None:
            while key is not None:
                self._announced.discard(key)
                self._processing.add(key)
                self._t0.setdefault(key, self._clock())  # a delayed re-plan is a trigger too
                self._got[key] = None
                key = self._queue.get(timeout=0)
            self._wake.set()

    async def next_batch(self) -> list[Key]:
        """Up to `chunk` keys, as soon as there are any."""
        while True:
            if not self._got and not self._announced and self._background and self._urgent_open:
                # Nothing urgent on its way: feed one chunk of the background lane.
                for key in list(islice(self._background, self._chunk)):
                    del self._background[key]
                    self._queue.add(key)
            if self._got:
                batch = list(islice(self._got, self._chunk))
                for key in batch:
                    del self._got[key]
                return batch
            self._wake.clear()
            await self._wake.wait()

    def shutdown(self) -> None:
        self._queue.shutdown()
