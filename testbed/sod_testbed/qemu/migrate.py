"""A real pre-copy live migration between two QEMU processes, driven over QMP, and what it cost.

The sequence (shared/notes/qemu-migration.md §3):
  destination (started with `-incoming defer`): migrate-set-capabilities; migrate-incoming URI
  source: migrate-set-capabilities; migrate-set-parameters (max-bandwidth, downtime-limit);
          migrate URI; poll query-migrate until completed, failed or cancelled
          (migrate_cancel at the timeout: a pre-copy that cannot converge never ends by itself)
  then: the destination is `running` and its console shows the guest alive and intact.

Figures come from QEMU's own `query-migrate` on the source: total-time (migrate command to the
guest running on the destination, Table V's "total time"), downtime (stop-and-copy, measured by
the source), setup-time, ram.transferred ("data sent"), dirty-sync-count. The guest's pause as
it sees it is taken from the QMP events: STOP on the source to RESUME on the destination.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sod_testbed.qemu.console import HandoffCheck, check_handoff
from sod_testbed.qemu.qmp import JsonObj, QmpError
from sod_testbed.qemu.vm import QemuGuest

FINAL = ("completed", "failed", "cancelled")
UNCAPPED_BYTES_PER_SECOND = 10_000_000_000  # QEMU's max-bandwidth cannot be "off"; 10 GB/s is

PhaseCallback = Callable[[str, JsonObj], None]


@dataclass(frozen=True)
class MigrationOptions:
    """`max_bandwidth_bytes` None: QEMU's own cap off (shape the link instead, see netns.py)."""

    max_bandwidth_bytes: int | None = 125_000_000  # 1 Gbit/s
    downtime_limit_ms: int = 300  # QEMU's and KubeVirt's default
    timeout_seconds: float = 60.0
    auto_converge: bool = False
    postcopy_after_seconds: float | None = None
    poll_seconds: float = 0.1
    check_beats: int = 2
    check_timeout_seconds: float = 30.0

    def capabilities(self) -> list[JsonObj]:
        caps = {"events": True, "auto-converge": self.auto_converge}
        caps["postcopy-ram"] = self.postcopy_after_seconds is not None
        return [{"capability": k, "state": v} for k, v in caps.items()]


@dataclass(frozen=True)
class MigrationResult:
    status: str  # completed | failed | cancelled
    total_ms: float | None = None
    downtime_ms: float | None = None
    setup_ms: float | None = None
    pause_ms: float | None = None  # source STOP -> destination RESUME (QMP event timestamps)
    transferred_bytes: float | None = None
    normal_bytes: float | None = None
    zero_pages: float | None = None
    dirty_sync_count: int | None = None
    postcopy_bytes: float | None = None
    expected_downtime_ms: float | None = None
    mbps: float | None = None
    error: str | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)  # (status, s after migrate)
    guest: HandoffCheck | None = None
    source_cpu_seconds: float | None = None
    target_cpu_seconds: float | None = None

    @property
    def ok(self) -> bool:
        """Completed according to QEMU and the guest checked alive and intact on the target."""
        return self.status == "completed" and self.guest is not None and self.guest.ok

    def as_dict(self) -> JsonObj:
        out: JsonObj = {k: v for k, v in self.__dict__.items() if k not in ("guest", "phases")}
        out["phases"] = [list(p) for p in self.phases]
        out["guest_ok"] = self.guest.ok if self.guest else None
        out["guest_check"] = self.guest.reason if self.guest else None
        out["ok"] = self.ok
        return out


def figures(info: JsonObj, last_active: JsonObj | None = None) -> dict[str, Any]:
    """MigrationResult fields from a final `query-migrate` answer. A cancelled migration has no
    `ram` section: the last `active` sample says how far it had come."""
    ram = info.get("ram") or (last_active or {}).get("ram") or {}
    src = info if info.get("ram") else (last_active or info)
    page = ram.get("page-size") or 4096
    out: dict[str, Any] = {
        "total_ms": src.get("total-time"),
        "downtime_ms": info.get("downtime"),
        "setup_ms": src.get("setup-time"),
        "transferred_bytes": ram.get("transferred"),
        "normal_bytes": ram.get("normal-bytes"),
        "zero_pages": ram.get("duplicate"),
        "dirty_sync_count": ram.get("dirty-sync-count"),
        "postcopy_bytes": ram.get("postcopy-bytes"),
        "expected_downtime_ms": src.get("expected-downtime"),
        "mbps": ram.get("mbps"),
        "error": info.get("error-desc"),
    }
    if out["normal_bytes"] is None and ram.get("normal") is not None:
        out["normal_bytes"] = ram["normal"] * page
    return out


def pause_ms(stop_ts: float | None, resume_ts: float | None) -> float | None:
    if stop_ts is None or resume_ts is None or resume_ts < stop_ts:
        return None
    return (resume_ts - stop_ts) * 1000.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def migrate(
    src: QemuGuest,
    dst: QemuGuest,
    uri: str,
    options: MigrationOptions | None = None,
    on_phase: PhaseCallback | None = None,
) -> MigrationResult:
    """Migrate `src` into `dst` (started with incoming=True) over `uri` ("tcp:HOST:PORT",
    listened on by the destination). `on_phase(name, info)` is called with "target-ready" once
    the destination listens, then with each new query-migrate status (setup, active, device,
    postcopy-active, completed, failed, cancelled), and with "checked" after the guest check."""
    opts = options or MigrationOptions()
    notify = on_phase or (lambda _name, _info: None)
    cpu0 = (src.cpu_seconds(), dst.cpu_seconds())
    try:
        _prepare(src, dst, uri, opts)
        notify("target-ready", {"uri": uri})
        info, last_active, phases = _run(src, uri, opts, notify)
    except QmpError as err:
        return MigrationResult(status="failed", error=str(err))
    src.qmp.pump(0.05)
    dst.qmp.pump(0.05)
    stop, resume = src.qmp.event("STOP"), dst.qmp.event("RESUME")
    result: JsonObj = {
        **figures(info, last_active),
        "status": info["status"],
        "phases": phases,
        "pause_ms": pause_ms(
            stop.timestamp if stop else None, resume.timestamp if resume else None
        ),
        "source_cpu_seconds": src.cpu_seconds() - cpu0[0],
        "target_cpu_seconds": dst.cpu_seconds() - cpu0[1],
    }
    if info["status"] == "completed":
        result["guest"] = check_guest(src, dst, opts)
        notify("checked", {"ok": result["guest"].ok, "reason": result["guest"].reason})
    return MigrationResult(**result)


def _prepare(src: QemuGuest, dst: QemuGuest, uri: str, opts: MigrationOptions) -> None:
    dst.qmp.execute("migrate-set-capabilities", capabilities=opts.capabilities())
    dst.qmp.execute("migrate-incoming", uri=uri)
    src.qmp.execute("migrate-set-capabilities", capabilities=opts.capabilities())
    cap = opts.max_bandwidth_bytes or UNCAPPED_BYTES_PER_SECOND
    src.qmp.execute(
        "migrate-set-parameters", **{"max-bandwidth": cap, "downtime-limit": opts.downtime_limit_ms}
    )


def _run(
    src: QemuGuest, uri: str, opts: MigrationOptions, notify: PhaseCallback
) -> tuple[JsonObj, JsonObj | None, list[tuple[str, float]]]:
    """Start the migration and poll it to its end; (final info, last active info, phases)."""
    t0 = time.monotonic()
    src.qmp.execute("migrate", uri=uri)
    phases: list[tuple[str, float]] = []
    last_active: JsonObj | None = None
    postcopy_started = cancelled = False
    while True:
        info: JsonObj = src.qmp.execute("query-migrate")
        status = str(info.get("status", "none"))
        elapsed = time.monotonic() - t0
        if not phases or phases[-1][0] != status:
            phases.append((status, round(elapsed, 3)))
            notify(status, info)
        if status in ("active", "postcopy-active") and info.get("ram"):
            last_active = info
        if status in FINAL:
            break
        due = opts.postcopy_after_seconds
        if due is not None and not postcopy_started and elapsed >= due and status == "active":
            src.qmp.execute("migrate-start-postcopy")
            postcopy_started = True
        if elapsed > opts.timeout_seconds and not cancelled:
            src.qmp.execute("migrate_cancel")
            cancelled = True
        time.sleep(opts.poll_seconds)
    if status == "completed":
        info = _settled(src, info)
    return info, last_active, phases


def _settled(src: QemuGuest, info: JsonObj, wait: float = 1.0) -> JsonObj:
    """`completed` can be reported before its figures (total-time 0): re-poll briefly."""
    deadline = time.monotonic() + wait
    while not info.get("total-time") and time.monotonic() < deadline:
        time.sleep(0.02)
        info = src.qmp.execute("query-migrate")
    return info


def check_guest(src: QemuGuest, dst: QemuGuest, opts: MigrationOptions) -> HandoffCheck:
    """The destination runs, and its console shows the guest going on, intact."""
    try:
        status = dst.qmp.execute("query-status")
    except QmpError as err:
        return HandoffCheck(False, f"destination QMP: {err}", None, 0)
    if status.get("status") != "running":
        return HandoffCheck(False, f"destination is {status.get('status')}", None, 0)
    boot_sum = src.boot_sum or src.console().ready_sum
    if boot_sum is None:
        return HandoffCheck(False, "the source never printed its boot checksum", None, 0)
    deadline = time.monotonic() + opts.check_timeout_seconds
    while True:
        check = check_handoff(src.console(), dst.console(), boot_sum, opts.check_beats)
        if not check.pending or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if check.ok:
        dst.boot_sum = boot_sum
    return check
