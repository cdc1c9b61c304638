"""What the test guest's serial console says (guest-init.sh writes it), and whether a guest came
through a migration alive and intact. Pure: text in, verdicts out.

A migration moves the console too: the source's file stops at the switch-over and the
destination's starts there (QEMU's `-serial file:` on each side). The guest counts heartbeats
and prints, each time, the md5 of a region it wrote once at boot, so the destination must show:

* no second boot and no kernel oops/panic (1 of 87 "completed" migrations in the tested set-up
  left a crashed kernel on the destination: a completed status alone proves nothing);
* heartbeats that go on from where the source's stopped (a line cut in half at the switch-over
  may be lost, so the first one may skip one number), strictly one by one after that;
* the boot checksum in every heartbeat (the memory image arrived intact).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

_READY = re.compile(r"^MIGTEST READY mode=(\S+) sum=([0-9a-f]{32})\s*$")
_BEAT = re.compile(r"^MIGTEST beat=(\d+) sum=([0-9a-f]{32}) up=([\d.]+)\s*$")
_WRITTEN = re.compile(r"^MIGTEST w=(\d+) up=([\d.]+)\s*$")
_FILLED = re.compile(r"^MIGTEST DIRTY FILLED wss=(\d+)")
_CRASH = re.compile(r"Kernel panic|Oops|BUG: |general protection fault|Call Trace|Linux version")


@dataclass
class Console:
    """The parsed MIGTEST lines (and crash markers) of one console file."""

    boots: int = 0
    ready_sum: str | None = None
    beats: list[tuple[int, str, float]] = field(default_factory=list)  # (n, sum, guest uptime)
    written: list[tuple[int, float]] = field(default_factory=list)  # (MiB, guest uptime)
    filled: bool = False
    crash_lines: list[str] = field(default_factory=list)

    @property
    def last_beat(self) -> int | None:
        return self.beats[-1][0] if self.beats else None


def parse_console(text: str) -> Console:
    con = Console()
    for raw in text.splitlines():
        line = raw.strip("\r\x00")
        if _CRASH.search(line):
            con.crash_lines.append(line)
        if line == "MIGTEST BOOT":
            con.boots += 1
        elif m := _READY.match(line):
            con.ready_sum = m.group(2)
        elif m := _BEAT.match(line):
            con.beats.append((int(m.group(1)), m.group(2), float(m.group(3))))
        elif m := _WRITTEN.match(line):
            con.written.append((int(m.group(1)), float(m.group(2))))
        elif _FILLED.match(line):
            con.filled = True
    return con


def write_rate_mib_s(con: Console, since_uptime: float = 0.0) -> float | None:
    """The guest's own write rate (MiB/s of guest time) from its progress lines after
    `since_uptime`; None without two such lines."""
    points = [(w, t) for w, t in con.written if t >= since_uptime]
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        return None
    return (points[-1][0] - points[0][0]) / (points[-1][1] - points[0][1])


@dataclass(frozen=True)
class HandoffCheck:
    ok: bool
    reason: str
    source_last_beat: int | None
    target_beats: int
    pending: bool = False  # not enough heartbeats on the target yet: worth waiting for


def check_handoff(
    source: Console, target: Console, boot_sum: str, min_beats: int = 2
) -> HandoffCheck:
    """Did the guest come through alive and intact? `boot_sum` is the checksum its first boot
    printed (READY), which every later heartbeat must repeat."""
    last = source.last_beat

    def verdict(ok: bool, reason: str, pending: bool = False) -> HandoffCheck:
        return HandoffCheck(ok, reason, last, len(target.beats), pending)

    if target.crash_lines:
        return verdict(False, f"kernel trouble on the target: {target.crash_lines[0]!r}")
    if target.boots:
        return verdict(False, "the guest booted again on the target")
    if len(target.beats) < min_beats:
        return verdict(
            False, f"{len(target.beats)} heartbeats on the target, want {min_beats}", pending=True
        )
    numbers = [n for n, _, _ in target.beats]
    if last is not None and not last < numbers[0] <= last + 2:
        return verdict(False, f"heartbeat {numbers[0]} on the target after {last} on the source")
    if any(b - a != 1 for a, b in itertools.pairwise(numbers)):
        return verdict(False, f"heartbeats on the target not consecutive: {numbers}")
    bad = [n for n, s, _ in target.beats if s != boot_sum]
    if bad:
        return verdict(False, f"integrity checksum changed at heartbeat {bad[0]}")
    return verdict(True, f"heartbeats {numbers[0]}..{numbers[-1]} on the target, checksum intact")
