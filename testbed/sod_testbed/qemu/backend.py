"""The virt-handler player's QEMU backend (the shell): one real guest per chosen VMI, and real
pre-copy migrations between QEMU processes, each in a background thread so that the player's
loop never blocks on a boot (~6 s under TCG) or a transfer.

The player reads a `MigrationView` snapshot on every pass and decides what to write from it
(`sod_testbed.handler_player.real_migration_step`, pure); this module only runs processes:

* `RealGuest.boot()`: a QEMU for the VMI on its node, READY when the guest's console says so;
* `RealGuest.migrate(...)`: a destination QEMU (`-incoming defer`) for the target node, then
  `sod_testbed.qemu.migrate.migrate` over TCP (loopback, or the node fabric below): it listens
  (`target_port` known, the player writes targetNodeAddress), the source waits for `release()`
  (the player has written it) before `migrate`; every QMP status is stamped with the wall clock.
  When QEMU reports completed, the destination is the guest (the outcome is ok, and the player
  writes the hand-off, as virt-handler does when libvirt reports the domain running on the
  target); then the console check on the destination runs (heartbeats go on, boot checksum
  unchanged) and the source QEMU is stopped. A guest that fails the check after the hand-off is
  a dead domain: `error` is set and the player fails the VMI. On failure the destination is
  stopped and the source (which QEMU resumes after a failed or cancelled migration) stays the
  guest.

All QEMUs run on this host; nodes are kwok fakes. Without a fabric, "on its node" is
bookkeeping (the node name in the run record) and the link is loopback with QEMU's own cap
(1 Gbit/s by default): total time and data sent are those of a 1 Gbit/s link, the downtime is
not (QEMU lifts its cap for the stop-and-copy). With a `NodeFabric` (netns.py; the player's
`--real-link netns`) each node is a network namespace on a bridge, its NIC shaped as Table V's
link, and each QEMU runs in its node's namespace: the migration crosses the source node's
shaped egress, stop-and-copy included, to the target node's address. Each boot and migration
is appended to `records` (a JSON-lines file) for benchmarks and tests.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sod_testbed.qemu.image import GuestImage, build_guest
from sod_testbed.qemu.migrate import MigrationOptions, free_port, migrate
from sod_testbed.qemu.netns import NodeFabric
from sod_testbed.qemu.qmp import JsonObj
from sod_testbed.qemu.vm import GuestSpec, QemuGuest, Workload, short_run_dir

log = logging.getLogger("sod.handler_player.qemu")

RUNNING_STATES = ("setup", "active", "postcopy-active", "device", "pre-switchover")


@dataclass(frozen=True)
class MigrationView:
    """What the player may know of one real migration (wall-clock epoch seconds)."""

    target_port: int | None = None
    released: bool = False
    started_at: float | None = None  # QEMU's migration first seen running (setup/active)
    mode: str = "PreCopy"
    ended_at: float | None = None  # QEMU reported its final status
    outcome: str | None = None  # None while running; "ok" (completed: handed off) | "failed"
    reason: str = ""
    target_address: str = "127.0.0.1"  # where the destination QEMU listens (its node's)


class RealMigration:
    """One migration of one guest, run by a thread; `view()` is its state for the player."""

    def __init__(self, uid: str, target_node: str, options: MigrationOptions):
        self.uid = uid
        self.target_node = target_node
        self.options = options
        self._view = MigrationView()
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._abort = threading.Event()
        self.result: Any = None

    def view(self) -> MigrationView:
        with self._lock:
            return self._view

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._view = replace(self._view, **fields)

    def release(self) -> None:
        """The player has written the target's address: the source may start."""
        self.update(released=True)
        self._go.set()

    def wait_released(self) -> bool:
        """Block until `release()` or `abort()`; True when released (not aborted)."""
        self._go.wait()
        return not self._abort.is_set()

    def abort(self) -> None:
        """Before `release()`: the migration never starts. After it QEMU runs to its end (QMP is
        driven by the migration thread alone), as a KubeVirt migration in its last phase does."""
        self._abort.set()
        self._go.set()


class RealGuest:
    """The real guest of one VMI (`key` = namespace/name) and its migrations."""

    def __init__(
        self,
        key: str,
        uid: str,
        node: str,
        spec: Callable[[], GuestSpec],
        records: Path,
        notify: Callable[[], None],
        fabric: NodeFabric | None = None,
    ):
        self.key = key
        self.fabric = fabric
        self.uid = uid
        self.node = node
        self._make_spec = spec
        self.spec: GuestSpec | None = None
        self.records = records
        self.notify = notify
        self.run_dir = short_run_dir("sodvm-")
        self.guest: QemuGuest | None = None
        self.ready = False
        self.error: str | None = None
        self.migrations: dict[str, RealMigration] = {}
        self._serial = 0
        self._lock = threading.Lock()

    # ---- boot ----

    def boot(self) -> RealGuest:
        threading.Thread(target=self._boot, name=f"qemu-boot-{self.key}", daemon=True).start()
        return self

    def _boot(self) -> None:
        started = time.time()
        try:
            self.spec = self._make_spec()  # builds the image on first use (cached)
            guest = self._new_qemu(self.place(self.node)[0], incoming=False)
            self.guest = guest
            boot_s = guest.wait_ready(timeout=300)
            self.ready = True
            self._record({"event": "boot", "node": self.node, "boot_s": round(boot_s, 2)}, started)
            log.info("VMI %s: real guest READY on %s after %.1f s", self.key, self.node, boot_s)
        except Exception as err:  # any failure to start is the VMI's failure, reported as such
            self.error = f"the real guest did not start: {err}"
            log.error("VMI %s: %s", self.key, self.error)
        self.notify()

    def _new_qemu(self, netns: str | None, incoming: bool) -> QemuGuest:
        assert self.spec is not None
        with self._lock:
            self._serial += 1
            name = f"q{self._serial}"
        return QemuGuest(self.spec, self.run_dir, name, netns=netns, incoming=incoming).start()

    def place(self, node: str) -> tuple[str | None, str]:
        """The network namespace (None: this host's) and the address of `node`."""
        return self.fabric.place(node) if self.fabric else (None, "127.0.0.1")

    # ---- migrate ----

    def migrate(self, uid: str, target_node: str, options: MigrationOptions) -> RealMigration:
        job = self.migrations.get(uid)
        if job is None:
            job = self.migrations[uid] = RealMigration(uid, target_node, options)
            threading.Thread(
                target=self._migrate, args=(job,), name=f"qemu-mig-{self.key}", daemon=True
            ).start()
        return job

    def _migrate(self, job: RealMigration) -> None:
        src = self.guest
        try:
            if src is None or not self.ready:
                raise RuntimeError("the source guest is not running")
            netns, address = self.place(job.target_node)
            dst = self._new_qemu(netns, incoming=True)
        except Exception as err:
            job.update(outcome="failed", reason=f"target QEMU: {err}", ended_at=time.time())
            self.notify()
            return
        port = free_port()  # chosen on this host; as good in a node's namespace
        job.update(target_address=address)

        def on_phase(name: str, _info: JsonObj) -> None:
            self._on_phase(job, port, name)
            if name == "completed":
                self._handed_off(job, dst)

        try:
            result = migrate(src, dst, f"tcp:{address}:{port}", job.options, on_phase)
        except _Aborted:
            dst.stop()
            job.update(outcome="failed", reason="Migration aborted", ended_at=time.time())
            self.notify()
            return
        self._finish(job, src, dst, result)

    def _on_phase(self, job: RealMigration, port: int, name: str) -> None:
        now = time.time()
        if name == "target-ready":  # the destination listens: wait for the player's go
            job.update(target_port=port)
            self.notify()
            if not job.wait_released():
                raise _Aborted
        elif name in RUNNING_STATES and job.view().started_at is None:
            job.update(started_at=now)
            self.notify()
        if name == "postcopy-active":
            job.update(mode="PostCopy")
        if name in ("completed", "failed", "cancelled"):
            job.update(ended_at=now)

    def _handed_off(self, job: RealMigration, dst: QemuGuest) -> None:
        """QEMU completed: the guest runs on the destination from now on, checked or not."""
        with self._lock:
            self.guest, self.node = dst, job.target_node
        job.update(outcome="ok")
        self.notify()

    def _finish(self, job: RealMigration, src: QemuGuest, dst: QemuGuest, result: Any) -> None:
        job.result = result
        ended = job.view().ended_at or time.time()
        if job.view().outcome == "ok":
            src.stop()
            if not result.ok:
                why = result.guest.reason if result.guest is not None else result.error
                self.error = f"the guest did not come through the migration: {why}"
        else:
            dst.stop()
            reason = result.error or result.status
            if result.status == "cancelled":
                reason = f"pre-copy cancelled after {job.options.timeout_seconds:g} s"
            job.update(outcome="failed", reason=f"QEMU: {reason}", ended_at=ended)
        view = job.view()
        self._record(
            {
                "event": "migration",
                "migration_uid": job.uid,
                "target_node": job.target_node,
                "started_at": view.started_at,
                "ended_at": view.ended_at,
                "outcome": view.outcome,
                "reason": view.reason,
                **result.as_dict(),
            },
            view.started_at or ended,
        )
        log.info("VMI %s: real migration %s: %s", self.key, view.outcome, view.reason or "ok")
        self.notify()

    # ---- records, stop ----

    def _record(self, fields: JsonObj, at: float) -> None:
        ns, _, name = self.key.partition("/")
        line = {"namespace": ns, "name": name, "uid": self.uid, "at": at, **fields}
        if self.spec is not None:
            line["workload"] = self.spec.workload.name
            line["memory_mib"] = self.spec.memory_mib
        with self._lock, self.records.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def stop(self) -> None:
        for job in self.migrations.values():
            job.abort()
        if self.guest is not None:
            self.guest.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class _Aborted(Exception):
    """The VMIM was aborted before the source started sending."""


class Backend:
    """The player's real guests by VMI uid; the image is built (or found cached) on first use."""

    def __init__(
        self, state_dir: Path, notify: Callable[[], None], fabric: NodeFabric | None = None
    ):
        self.records = state_dir / "handler-player" / "real-vms.jsonl"
        self.records.parent.mkdir(parents=True, exist_ok=True)
        self.notify = notify
        self.fabric = fabric
        self.guests: dict[str, RealGuest] = {}
        self._image: GuestImage | None = None

    def image(self) -> GuestImage:
        if self._image is None:
            self._image = build_guest(log=False)
        return self._image

    def boot(self, key: str, uid: str, node: str, workload: Workload, memory_mib: int) -> RealGuest:
        def spec() -> GuestSpec:
            return GuestSpec(self.image(), workload, memory_mib=memory_mib)

        guest = RealGuest(key, uid, node, spec, self.records, self.notify, self.fabric)
        self.guests[uid] = guest
        return guest.boot()

    def reap(self, live: set[str]) -> None:
        """Stop the guests of VMIs that are gone or final."""
        for uid in [u for u in self.guests if u not in live]:
            guest = self.guests.pop(uid)
            log.info("VMI %s: its real guest is stopped (the VMI is gone or final)", guest.key)
            guest.stop()

    def stop(self) -> None:
        self.reap(set())
        if self.fabric is not None:
            self.fabric.close()


def migration_record(path: Path, migration_uid: str, timeout: float = 0.0) -> JsonObj | None:
    """The record of one migration (QEMU's figures and the guest check), waiting up to
    `timeout` s for it: it is written after the check, which follows the hand-off."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in read_records(path) if r.get("migration_uid") == migration_uid]
        if found or time.monotonic() >= deadline:
            return found[-1] if found else None
        time.sleep(0.2)


def read_records(path: Path) -> list[JsonObj]:
    """The backend's run records (boots and migrations), oldest first."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]
