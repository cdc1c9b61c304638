"""One real pre-copy live migration of an idle guest between two QEMU processes (TCG, loopback,
QEMU's 1 Gbit/s cap), driven by sod_testbed.qemu as the benchmark and the player drive it.

Covers: the guest built from Debian packages (tools/build-guest.sh's builder, cached), booted to
its READY line; the QMP sequence; the phases reported in order; QEMU's figures present; the
guest alive and intact on the destination (heartbeats go on, integrity checksum unchanged); the
source paused after the hand-off. Not covered here: network namespaces and dirtying workloads
(make bench-migration runs those). No control plane is started. Needs qemu-system-x86 (make
deps installs it): its absence fails the test, it does not skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sod_testbed.qemu.image import GuestImage, GuestImageError, build_guest
from sod_testbed.qemu.migrate import MigrationOptions, free_port, migrate
from sod_testbed.qemu.vm import QEMU, GuestSpec, QemuGuest, Workload, short_run_dir


@pytest.fixture(scope="module")
def image() -> GuestImage:
    problem = None
    if shutil.which(QEMU) is None:
        problem = f"{QEMU} not found: run `make deps` (tools/install-system-deps.sh)"
    else:
        try:
            return build_guest(log=False)
        except GuestImageError as err:
            problem = f"the guest could not be built: {err}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = short_run_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_idle_guest_migrates_and_goes_on_intact(image: GuestImage, run_dir: Path) -> None:
    spec = GuestSpec(image, Workload())
    src = QemuGuest(spec, run_dir, "src").start()
    dst = QemuGuest(spec, run_dir, "dst", incoming=True).start()
    phases: list[str] = []
    try:
        src.wait_ready(timeout=300)
        assert src.boot_sum
        result = migrate(
            src,
            dst,
            f"tcp:127.0.0.1:{free_port()}",
            MigrationOptions(timeout_seconds=120),
            on_phase=lambda name, _info: phases.append(name),
        )
        assert result.status == "completed", result.error
        assert result.guest is not None
        assert result.guest.ok, result.guest.reason
        assert result.ok
        assert phases[0] == "target-ready"
        assert phases[-2:] == ["completed", "checked"]
        assert phases.index("setup") < phases.index("active") < phases.index("completed")
        # An idle guest still has its kernel, initramfs and page cache to send (notes: ~84 MiB).
        assert result.transferred_bytes
        assert result.transferred_bytes > 16 * 2**20
        assert result.dirty_sync_count
        assert result.dirty_sync_count >= 2
        assert result.total_ms
        assert result.downtime_ms is not None
        assert src.qmp.execute("query-status")["status"] == "postmigrate"
        assert dst.boot_sum == src.boot_sum
    finally:
        src.stop()
        dst.stop()
