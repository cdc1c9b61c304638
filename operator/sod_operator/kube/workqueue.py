"""client-go's rate-limited work queue: keys to reconcile, each handed to one worker at a time.

* `add(key)` / `add_after(key, delay)`: a key is queued at most once, at its earliest due time
  (a later add never postpones it; an earlier one brings it forward).
* `get()` hands out the next due key, which is then *processing* until `done(key)`: it is never
  given to a second worker meanwhile; an add in between is kept and takes effect at `done`.
* `add_rate_limited(key)` re-queues a failed key after the larger of its own exponential
  back-off (base·2^failures, capped) and an overall token bucket shared by all keys (so a
  thousand failing keys do not hammer the apiserver at once); `forget(key)` after a success
  resets the key's back-off.
* `shutdown()` wakes every `get` with None; later adds are ignored.

The rate limiters are pure (`now` passed in); the queue reads a monotonic clock.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: `base`·2^(failures-1), at most `cap` seconds."""

    base: float = 0.05
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.base * float(2 ** min(failures - 1, 62)), self.cap)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; each retry takes one (client-go's
    BucketRateLimiter: a reservation may be in the future, and then it is the delay)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def reserve(self, now: float) -> float:
        """Take one token; seconds until it is actually available (0 when there is one)."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate + (self._at - now)


class RateLimiter(Generic[K]):
    """client-go's default controller rate limiter: max(per-key back-off, overall bucket)."""

    def __init__(
        self, backoff: Backoff | None = None, rate: float = 10.0, burst: int = 100, now: float = 0.0
    ) -> None:
        self.backoff = backoff or Backoff()
        self._bucket = TokenBucket(rate, burst, now)
        self._failures: dict[K, int] = {}

    def when(self, key: K, now: float) -> float:
        """The delay before retrying `key` (counts one more failure of it)."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return max(self.backoff.delay(failures), self._bucket.reserve(now))

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        rate_limiter: RateLimiter[K] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._limiter: RateLimiter[K] = rate_limiter or RateLimiter(now=clock())
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._processing: set[K] = set()
        self._dirty: dict[K, float] = {}
        """Processing keys added again: queued at their due time when done."""
        self._seq = 0
        self._cond = threading.Condition()
        self._shutdown = False

    # -- adding

    def add(self, key: K) -> None:
        self.add_after(key, 0.0)

    def add_after(self, key: K, delay: float) -> None:
        with self._cond:
            if self._shutdown:
                return
            due = self._clock() + max(delay, 0.0)
            if key in self._processing:
                if due < self._dirty.get(key, float("inf")):
                    self._dirty[key] = due
                return
            self._push(key, due)

    def add_rate_limited(self, key: K) -> None:
        with self._cond:
            delay = self._limiter.when(key, self._clock())
        self.add_after(key, delay)

    def forget(self, key: K) -> None:
        with self._cond:
            self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        with self._cond:
            return self._limiter.num_requeues(key)

    def _push(self, key: K, due: float) -> None:
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        self._cond.notify()

    # -- taking

    def get(self, timeout: float | None = None) -> K | None:
        """The next due key (processing until `done`); None once shut down or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._shutdown:
                now = self._clock()
                key = self._pop_due(now)
                if key is not None:
                    return key
                if deadline is not None and now >= deadline:
                    return None
                wake = self._heap[0][0] if self._heap else None
                if deadline is not None:
                    wake = deadline if wake is None else min(wake, deadline)
                self._cond.wait(None if wake is None else max(wake - now, 0.001))
            return None

    def _pop_due(self, now: float) -> K | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded by an earlier due time
        if not self._heap or self._heap[0][0] > now:
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._due[key]
        self._processing.add(key)
        return key

    def idle(self) -> bool:
        """Nothing being processed and nothing due now (keys waiting for a later time aside)."""
        with self._cond:
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)
            due_now = bool(self._heap) and self._heap[0][0] <= self._clock()
            return not self._processing and not due_now

    async def aget(self) -> K | None:
        """`get` for an asyncio worker: waits in a thread, so the event loop runs on (a waiting
        `aget` ends at `shutdown`, not at cancellation)."""
        return await asyncio.to_thread(self.get)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            due = self._dirty.pop(key, None)
            if due is not None and not self._shutdown:
                self._push(key, due)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutdown

    def __len__(self) -> int:
        """Keys waiting (due or not), including processing keys added again."""
        with self._cond:
            return len(self._due) + len(self._dirty)
