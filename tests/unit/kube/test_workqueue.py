"""The work queue (`sod_operator.kube.workqueue`): de-duplication, one worker per key, per-key
exponential back-off, the overall token bucket, shutdown.

The rate limiters are pure (time passed in); the queue's clock is a fake one the tests move,
so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import threading

from sod_operator.kube.workqueue import Backoff, RateLimiter, TokenBucket, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- moved from tests/unit/verifier/test_controller.py (the verifier's queue, now shared)


def test_queue_keeps_each_key_once_at_its_earliest_time() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 60)
    q.add_after("a", 0)
    q.add_after("b", 0)
    q.add_after("b", 60)
    assert sorted([q.get(1), q.get(1)]) == ["a", "b"]  # type: ignore[type-var]
    assert q.get(0.05) is None
    assert len(q) == 0


def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(1) == "a"
    q.add("a")  # an event for it while a worker holds it
    assert q.get(0.05) is None  # a second worker must not take it
    assert len(q) == 1
    q.done("a")
    assert q.get(1) == "a"
    q.done("a")
    assert q.get(0.05) is None
    assert len(q) == 0


def test_a_re_add_during_processing_keeps_the_earliest_due_time() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(1) == "a"
    q.add_after("a", 60)
    q.add_after("a", 0)
    q.done("a")
    assert q.get(1) == "a"


# -- back-off and rate limit


def test_backoff_doubles_per_failure_up_to_its_cap() -> None:
    b = Backoff(base=0.5, cap=60.0)
    assert [b.delay(n) for n in range(0, 10)] == [
        0.0,
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]
    assert b.delay(10_000) == 60.0  # no overflow after a long outage


def test_token_bucket_allows_a_burst_then_spaces_reservations_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(bucket.reserve(0.0), 3) for _ in range(3)] == [0.1, 0.2, 0.3]
    # A second later the debt (0.3 s) is paid and 0.7 s of tokens saved up again.
    assert bucket.reserve(1.0) == 0.0


def test_rate_limiter_is_the_larger_of_the_keys_backoff_and_the_bucket() -> None:
    limiter: RateLimiter[str] = RateLimiter(Backoff(base=1.0, cap=100.0), rate=1.0, burst=2)
    assert limiter.when("a", 0.0) == 1.0  # first failure of a: its back-off
    assert limiter.when("a", 0.0) == 2.0
    # a took both tokens: b's first failure waits 1 s for the bucket (as long as its back-off),
    # c's waits 2 s although its own back-off says 1 s (the overall rate wins).
    assert limiter.when("b", 0.0) == 1.0
    assert limiter.when("c", 0.0) == 2.0
    assert limiter.num_requeues("a") == 2
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


def test_add_rate_limited_holds_a_failing_key_back_and_forget_resets_it() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(RateLimiter(Backoff(base=1.0, cap=8.0), now=clock.now), clock)
    for failures, wait in ((1, 1.0), (2, 2.0), (3, 4.0)):
        q.add_rate_limited("node-1")
        assert q.num_requeues("node-1") == failures
        clock.now += wait - 0.01
        assert q.get(timeout=0) is None  # not yet due
        clock.now += 0.01
        assert q.get(timeout=0) == "node-1"
        q.done("node-1")
    q.forget("node-1")
    q.add_rate_limited("node-1")
    clock.now += 1.0
    assert q.get(timeout=0) == "node-1"  # back to the first step


def test_an_add_brings_a_backed_off_key_forward() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(RateLimiter(Backoff(base=30.0), now=clock.now), clock)
    q.add_rate_limited("a")
    assert q.get(timeout=0) is None
    q.add("a")  # a watch event: look now, whatever the back-off said
    assert q.get(timeout=0) == "a"


def test_shutdown_wakes_a_blocked_get_with_none_and_ignores_later_adds() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.shutdown()
    worker.join(10)
    assert got == [None]
    q.add("a")
    assert q.get(timeout=0) is None
    assert q.shutting_down


def test_keys_can_be_tuples() -> None:
    q: WorkQueue[tuple[str, str]] = WorkQueue()
    q.add(("tenant", "vm-1"))
    assert q.get(1) == ("tenant", "vm-1")


def test_idle_means_nothing_processing_and_nothing_due_now() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("later", 30)
    assert q.idle()  # a deadline in the future is not work
    q.add("now")
    assert not q.idle()
    assert q.get(0) == "now"
    assert not q.idle()  # being processed
    q.done("now")
    assert q.idle()
    clock.now += 31
    assert not q.idle()
