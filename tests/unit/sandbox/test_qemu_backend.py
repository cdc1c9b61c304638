"""The QEMU backend's order of events for one migration (threads, no QEMU): the guest is the
destination as soon as QEMU reports completed, before the console check; a guest that fails
that check after the hand-off is a dead guest (`error`), never a failed migration."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sod_testbed.qemu import backend
from sod_testbed.qemu.backend import RealGuest, migration_record, read_records
from sod_testbed.qemu.console import HandoffCheck
from sod_testbed.qemu.migrate import MigrationOptions, MigrationResult


class FakeQemu:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def _guest(tmp_path: Path, woken: threading.Event) -> RealGuest:
    guest = RealGuest("ns/vm", "uid-1", "n1", lambda: None, tmp_path / "r.jsonl", woken.set)  # type: ignore[arg-type, return-value]
    guest.guest, guest.ready = FakeQemu("src"), True  # type: ignore[assignment]
    guest._new_qemu = lambda netns, incoming: FakeQemu("dst")  # type: ignore[method-assign, assignment, return-value]
    return guest


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, check: HandoffCheck) -> Any:
    """One migration whose QEMU completes; the test looks between completion and the check."""
    seen: dict[str, Any] = {}

    def fake_migrate(src: Any, dst: Any, uri: str, opts: Any, on_phase: Any) -> MigrationResult:
        on_phase("target-ready", {})
        on_phase("active", {})
        on_phase("completed", {})
        seen["at_completion"] = (guest.guest, guest.node, job.view().outcome, src.stopped)
        return MigrationResult(status="completed", total_ms=700.0, guest=check)

    monkeypatch.setattr(backend, "migrate", fake_migrate)
    guest = _guest(tmp_path, threading.Event())
    job = guest.migrate("mig-1", "n2", MigrationOptions())
    source = guest.guest
    job.release()
    assert migration_record(guest.records, "mig-1", timeout=10) is not None  # checked
    assert source.stopped  # type: ignore[union-attr]
    return guest, job, seen


def test_the_guest_is_handed_off_at_qemus_completion_then_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ok = HandoffCheck(True, "heartbeats 3..4 on the target, checksum intact", 2, 2)
    guest, job, seen = _run(monkeypatch, tmp_path, ok)
    dst, node, outcome, source_stopped = seen["at_completion"]
    assert (dst.name, node, outcome, source_stopped) == ("dst", "n2", "ok", False)
    assert guest.error is None
    assert job.view().outcome == "ok"
    assert job.view().ended_at is not None
    (record,) = read_records(guest.records)
    assert record["guest_ok"] is True
    assert record["outcome"] == "ok"


def test_a_guest_that_fails_its_check_after_the_hand_off_is_dead(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = HandoffCheck(False, "the boot checksum changed", 2, 2)
    guest, job, _seen = _run(monkeypatch, tmp_path, bad)
    assert job.view().outcome == "ok"  # the hand-off stands, as KubeVirt's would
    assert guest.error == "the guest did not come through the migration: the boot checksum changed"
    (record,) = read_records(guest.records)
    assert record["guest_ok"] is False
