"""One real pre-copy live migration of an idle guest between two QEMU processes (TCG, loopback,
QEMU's 1 Gbit/s cap), driven by sod_testbed.qemu as the benchmark and the player drive it.

Covers: the guest built from Debian packages (tools/build-guest.sh's builder, cached), booted to
its READY line; the QMP sequence; the phases reported in order; QEMU's figures present; the
guest alive and intact on the destination (heartbeats go on, integrity checksum unchanged); the
source paused after the hand-off. The player's backend on node namespaces joined by a shaped
bridge (`--real-link netns`). Not covered here: dirtying workloads (make bench-migration runs
those). Needs qemu-system-x86 (make deps installs it): its absence fails the test, it does not
skip.

And in the loop (the session's control plane, real virt-controller, the virt-handler player's
QEMU backend, sod-operator): a SecureVM whose VMI carries `sod.dev/real-vm: idle` runs a real
guest; removing its node's profile label makes the operator relocate it, by a real pre-copy
between two QEMU processes; the VMI's migrationState carries QEMU's moments and the guest is
checked alive and intact on the target after the hand-off (the player's run record). A real
migration that QEMU cancels (KubeVirt's force-failure annotation) is a Failed VMIM with QEMU's
reason, and the guest goes on at the source.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sod_testbed.cluster import LocalCluster
from sod_testbed.handler_player import REAL_VM_ANNOTATION
from sod_testbed.kubeapi import KubeApi
from sod_testbed.qemu.backend import Backend, migration_record, read_records
from sod_testbed.qemu.image import GuestImage, GuestImageError, build_guest
from sod_testbed.qemu.migrate import MigrationOptions, free_port, migrate
from sod_testbed.qemu.netns import NodeFabric
from sod_testbed.qemu.vm import QEMU, GuestSpec, QemuGuest, Workload, short_run_dir

from tests.e2e.harness import Kube, condition, vm_manifest, vmim_manifest, wait_for
from tests.e2e.operator_run import SOD, OperatorProcess, Trust, securevm

X, Y = "hyperwall-1", "hyperwall-2"


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


def test_a_guest_migrates_between_two_node_namespaces_over_their_shaped_link(
    image: GuestImage, tmp_path: Path
) -> None:
    """The player's backend with a NodeFabric (`--real-link netns`): the guest boots in its
    node's namespace, the destination listens at the target node's address, and the guest goes
    on intact there; the namespaces are gone once the backend stops."""
    fabric = NodeFabric()
    backend = Backend(tmp_path, lambda: None, fabric)
    try:
        guest = backend.boot("ns/vm", "uid-n", "node-a", Workload(), 512)
        wait_for(lambda: guest.ready or guest.error, bool, "the guest booted", 300)
        assert guest.error is None, guest.error
        options = MigrationOptions(max_bandwidth_bytes=None, timeout_seconds=120)
        job = guest.migrate("mig-n", "node-b", options)
        wait_for(lambda: job.view().target_port, bool, "the destination listening", 120)
        target_ns, target_address = fabric.place("node-b")
        assert job.view().target_address == target_address
        job.release()
        run = migration_record(backend.records, "mig-n", timeout=180)
        assert run is not None, "no record of the migration"
        assert run["outcome"] == "ok", run
        assert run["guest_ok"] is True, run["guest_check"]
        assert guest.node == "node-b"
        assert guest.guest is not None
        assert guest.guest.netns == target_ns
    finally:
        backend.stop()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert fabric.prefix not in listed


def test_the_operator_relocates_a_real_guest_by_a_real_migration(
    image: GuestImage,
    hyperwall_operator: OperatorProcess,
    kube: Kube,
    kube_api: KubeApi,
    sandbox: LocalCluster,
) -> None:
    body = securevm("real-1", {"options": ["Basic", "HypervisorProtection"]})
    body["spec"]["template"]["template"]["metadata"]["annotations"] = {REAL_VM_ANNOTATION: "idle"}
    kube.create("securevms", body, api_version=SOD)
    ready = wait_for(
        lambda: kube.get("securevms", "real-1", api_version=SOD) or {},
        lambda o: (condition(o, "Ready") or {}).get("status") == "True",
        "real-1 Ready (its guest booted under TCG)",
        300,
    )
    source = ready["status"]["nodeName"]
    records = sandbox.state_dir / "handler-player" / "real-vms.jsonl"
    uid = (kube.vmi("real-1") or {})["metadata"]["uid"]
    assert [r["event"] for r in read_records(records) if r["uid"] == uid] == ["boot"]

    Trust(kube_api).set(source)  # the verifier's revocation: the profile label goes
    vmi = wait_for(
        lambda: kube.vmi("real-1") or {},
        lambda v: (
            bool(v)
            and (v["status"].get("migrationState") or {}).get("completed") is True
            and v["status"].get("nodeName") not in (None, source)
        ),
        "real-1 migrated off its revoked node",
        240,
    )
    state = vmi["status"]["migrationState"]
    assert not state.get("failed"), state
    assert state["mode"] == "PreCopy"
    run = migration_record(records, state["migrationUid"], timeout=60)  # after the guest check
    assert run is not None, "no record of the real migration"
    assert [r["event"] for r in read_records(records) if r["uid"] == uid] == ["boot", "migration"]
    assert run["outcome"] == "ok", run
    assert run["status"] == "completed"
    assert run["guest_ok"] is True, run["guest_check"]
    assert run["target_node"] == vmi["status"]["nodeName"]
    assert run["migration_uid"] == state["migrationUid"]
    assert run["transferred_bytes"] > 16 * 2**20  # a real guest's memory went over the wire
    (vmim,) = wait_for(  # virt-controller sets the VMIM's phase a sync after the VMI's state
        lambda: [
            m
            for m in kube.api.list(kube.path("virtualmachineinstancemigrations"))["items"]
            if m["metadata"]["uid"] == state["migrationUid"]
        ],
        lambda ms: len(ms) == 1 and ms[0]["status"].get("phase") in ("Succeeded", "Failed"),
        "the migration's final phase",
        60,
    )
    assert vmim["status"]["phase"] == "Succeeded"


def test_a_real_migration_qemu_cancels_is_a_failed_migration(
    image: GuestImage, kube: Kube, sandbox: LocalCluster
) -> None:
    annotations = {
        REAL_VM_ANNOTATION: "idle",
        "kubevirt.io/func-test-force-launcher-migration-failure": "true",
    }
    kube.create("virtualmachines", vm_manifest("real-2", annotations=annotations))
    source = kube.wait_vmi_phase("real-2", "Running", timeout=300)["status"]["nodeName"]
    kube.create("virtualmachineinstancemigrations", vmim_manifest("mig-2", "real-2"))
    vmim = kube.wait_vmim_final("mig-2", timeout=180)
    assert vmim["status"]["phase"] == "Failed"
    vmi = kube.vmi("real-2") or {}
    state = vmi["status"]["migrationState"]
    assert state["failed"] is True
    assert state["failureReason"].startswith("QEMU: pre-copy cancelled")
    assert vmi["status"]["nodeName"] == source
    records = sandbox.state_dir / "handler-player" / "real-vms.jsonl"
    run = migration_record(records, state["migrationUid"], timeout=60)
    assert run is not None, "no record of the cancelled migration"
    assert run["status"] == "cancelled"
    assert run["outcome"] == "failed"
