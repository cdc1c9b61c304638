"""Reading a migration's figures from QEMU's answers (pure), and the QMP client against a QMP
server played over a real unix socket (no QEMU).

Covers: figures from a completed query-migrate, from a cancelled one (no `ram`: the last active
sample), the guest's pause from the STOP/RESUME event clocks, the capabilities sent; QMP's
greeting and negotiation, answers found among interleaved events, errors, events collected
between commands.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sod_testbed.qemu.migrate import MigrationOptions, figures, pause_ms
from sod_testbed.qemu.qmp import Qmp, QmpError

COMPLETED = {
    "status": "completed",
    "setup-time": 2,
    "downtime": 19,
    "total-time": 4533,
    "ram": {
        "transferred": 598_000_000,
        "normal-bytes": 596_000_000,
        "duplicate": 45401,
        "dirty-sync-count": 7,
        "postcopy-bytes": 0,
        "mbps": 1000.1,
        "page-size": 4096,
    },
}
ACTIVE = {
    "status": "active",
    "setup-time": 1,
    "total-time": 30073,
    "expected-downtime": 2197,
    "ram": {"transferred": 3_762_000_000, "normal": 900_000, "dirty-sync-count": 15},
}


def test_figures_of_a_completed_migration() -> None:
    got = figures(COMPLETED)
    assert got["total_ms"] == 4533
    assert got["downtime_ms"] == 19
    assert got["transferred_bytes"] == 598_000_000
    assert got["dirty_sync_count"] == 7
    assert got["error"] is None


def test_a_cancelled_migration_reports_its_last_active_sample() -> None:
    got = figures({"status": "cancelled"}, last_active=ACTIVE)
    assert got["total_ms"] == 30073
    assert got["downtime_ms"] is None
    assert got["transferred_bytes"] == 3_762_000_000
    assert got["normal_bytes"] == 900_000 * 4096
    assert got["expected_downtime_ms"] == 2197


def test_pause_is_stop_on_the_source_to_resume_on_the_target() -> None:
    assert pause_ms(100.000, 100.020) == pytest.approx(20.0)
    assert pause_ms(None, 100.0) is None
    assert pause_ms(100.0, 99.0) is None


def test_capabilities_follow_the_options() -> None:
    caps = {c["capability"]: c["state"] for c in MigrationOptions().capabilities()}
    assert caps == {"events": True, "auto-converge": False, "postcopy-ram": False}
    caps = {
        c["capability"]: c["state"]
        for c in MigrationOptions(postcopy_after_seconds=3.0, auto_converge=True).capabilities()
    }
    assert caps["postcopy-ram"]
    assert caps["auto-converge"]


def _event(name: str, seconds: int) -> bytes:
    msg = {"event": name, "timestamp": {"seconds": seconds, "microseconds": 500000}, "data": {}}
    return json.dumps(msg).encode() + b"\n"


class FakeQemu:
    """Plays QEMU's side of QMP: greeting, then an answer per command (with events sent before
    the answer to query-status, and an error for anything unknown)."""

    def __init__(self, path: Path):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.received: list[dict[str, object]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            for line in lines:
                msg = json.loads(line)
                self.received.append(msg)
                cmd = msg["execute"]
                if cmd == "qmp_capabilities":
                    conn.sendall(b'{"return": {}}\n')
                elif cmd == "query-status":
                    conn.sendall(_event("STOP", 100) + b'{"return": {"status": "paused"}}\n')
                    conn.sendall(_event("RESUME", 101))
                else:
                    conn.sendall(b'{"error": {"class": "CommandNotFound", "desc": "nope"}}\n')


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[tuple[Qmp, FakeQemu]]:
    fake = FakeQemu(tmp_path / "q.qmp")
    client = Qmp(tmp_path / "q.qmp", timeout=5).connect(wait=5)
    yield client, fake
    client.close()
    fake.server.close()


def test_qmp_negotiates_and_finds_answers_among_events(qmp: tuple[Qmp, FakeQemu]) -> None:
    client, fake = qmp
    assert client.execute("query-status") == {"status": "paused"}
    assert fake.received[0] == {"execute": "qmp_capabilities"}
    stop = client.event("STOP")
    assert stop is not None
    assert stop.timestamp == 100.5
    client.pump(1.0)
    resume = client.event("RESUME")
    assert resume is not None
    assert resume.timestamp == 101.5


def test_qmp_errors_raise_with_qemus_message(qmp: tuple[Qmp, FakeQemu]) -> None:
    client, fake = qmp
    with pytest.raises(QmpError, match="CommandNotFound: nope"):
        client.execute("migrate", uri="tcp:127.0.0.1:1")
    assert fake.received[-1] == {"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:1"}}
