"""The fleet's published nonces: when the next is issued and which are kept (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sod_operator.api.v1alpha1.nodeattestation import MAX_CHALLENGES, ChallengeList
from sod_operator.attestation.challenges import next_rotation, rotate

from tests.unit.attestation.golden import SeededEntropy

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
EVERY = timedelta(seconds=10)
KEEP = timedelta(seconds=60)


def _rounds(n: int, start: ChallengeList | None = None) -> ChallengeList:
    current, entropy = start or ChallengeList(), SeededEntropy(b"rounds")
    for i in range(n):
        published = rotate(current, T0 + i * EVERY, EVERY, KEEP, entropy)
        assert published is not None
        current = published
    return current


def test_the_first_nonce_is_issued_at_once() -> None:
    first = rotate(ChallengeList(), T0, EVERY, KEEP, SeededEntropy(b"x"))
    assert first is not None
    assert first.newest is not None
    assert first.newest.issued_time == T0
    assert len(first.newest.nonce) == 64


def test_no_new_nonce_before_the_interval_and_one_at_it() -> None:
    first = _rounds(1)
    assert (
        rotate(first, T0 + EVERY - timedelta(milliseconds=1), EVERY, KEEP, SeededEntropy(b"y"))
        is None
    )
    assert next_rotation(first, T0 + timedelta(seconds=3), EVERY) == timedelta(seconds=7)
    second = rotate(first, T0 + EVERY, EVERY, KEEP, SeededEntropy(b"y"))
    assert second is not None
    assert second.challenges[1:] == first.challenges  # newest first, the older still listed


def test_nonces_too_old_to_be_fresh_for_any_profile_are_dropped_one_interval_later() -> None:
    """Kept one interval past the longest freshness bound: evidence answering a nonce is judged
    stale at its expiry (`EvidenceStale`, the reason that says what happened) before the nonce
    is gone (`NonceMismatch`)."""
    listed = _rounds(20)
    newest = listed.newest
    assert newest is not None
    assert all(newest.issued_time - c.issued_time <= KEEP + EVERY for c in listed.challenges)
    assert len(listed.challenges) == KEEP // EVERY + 2  # the one exactly KEEP + EVERY old too


def test_the_list_is_bounded() -> None:
    listed = _rounds(MAX_CHALLENGES + 10, None)
    long_keep = rotate(listed, T0 + 10_000 * EVERY, EVERY, timedelta(days=30), SeededEntropy(b"z"))
    assert long_keep is not None
    assert len(long_keep.challenges) <= MAX_CHALLENGES


def test_a_clock_that_went_back_gets_a_new_nonce_and_drops_future_ones() -> None:
    listed = _rounds(3)
    back = rotate(listed, T0 - timedelta(seconds=5), EVERY, KEEP, SeededEntropy(b"w"))
    assert back is not None
    assert back.newest is not None
    assert back.newest.issued_time == T0 - timedelta(seconds=5)
    assert all(c.issued_time <= T0 - timedelta(seconds=5) for c in back.challenges)
