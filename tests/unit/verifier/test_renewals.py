"""The renewal batch (`sod_operator.verifier.renewals`): when the fleet's renewals are
written, and what a write holds. The clock is passed in; nothing here waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sod_operator.api.v1alpha1.nodeattestation import Renewal, RenewalList
from sod_operator.verifier.renewals import BatchSettings, RenewalBatch

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _renewal(seconds: int, content: str = "a") -> Renewal:
    return Renewal(evidence_time=T0 + timedelta(seconds=seconds), content_sha256=content * 64)


def test_nothing_is_written_until_a_renewal_is_due() -> None:
    batch = RenewalBatch(BatchSettings(window=2.0))
    batch.offer("n1", _renewal(10), due=False, now=100.0)
    assert batch.wait(round_in=True, now=200.0) is None
    batch.offer("n2", _renewal(10), due=True, now=200.0)
    assert batch.wait(round_in=True, now=200.0) == 0.0
    assert set(batch.merged(RenewalList(), {"n1", "n2"}).renewals) == {"n1", "n2"}


def test_a_round_not_in_delays_the_write_at_most_one_window() -> None:
    batch = RenewalBatch(BatchSettings(window=2.0))
    batch.offer("n1", _renewal(10), due=True, now=100.0)
    assert batch.wait(round_in=False, now=101.5) == 0.5
    assert batch.wait(round_in=False, now=102.0) == 0.0


def test_writes_are_at_least_a_window_apart() -> None:
    batch = RenewalBatch(BatchSettings(window=2.0))
    batch.offer("n1", _renewal(10), due=True, now=100.0)
    wrote = batch.merged(RenewalList(), {"n1", "n2"})
    batch.written(wrote, now=100.0)
    assert not batch.due
    batch.offer("n2", _renewal(11), due=True, now=100.5)
    assert batch.wait(round_in=True, now=100.5) == 1.5


def test_a_write_keeps_newer_renewals_drops_deleted_nodes_and_keeps_later_offers() -> None:
    batch = RenewalBatch()
    published = RenewalList(renewals={"gone": _renewal(1), "n1": _renewal(30), "n2": _renewal(5)})
    batch.offer("n1", _renewal(20), due=True, now=1.0)  # older than published: not written
    batch.offer("n2", _renewal(40), due=True, now=1.0)
    wrote = batch.merged(published, {"n1", "n2"})
    assert wrote.renewals == {"n1": _renewal(30), "n2": _renewal(40)}
    batch.offer("n2", _renewal(50), due=True, now=2.0)  # arrived while writing
    batch.written(wrote, now=3.0)
    assert batch.due
    assert batch.merged(wrote, {"n1", "n2"}).renewals["n2"] == _renewal(50)


def test_a_forgotten_node_is_no_longer_due() -> None:
    batch = RenewalBatch()
    batch.offer("n1", _renewal(10), due=True, now=1.0)
    batch.forget("n1")
    assert not batch.due
    assert batch.wait(round_in=True, now=100.0) is None
