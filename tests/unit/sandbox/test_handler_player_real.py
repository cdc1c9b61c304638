"""The virt-handler player's pure decisions for real guests (QEMU backend): which VMIs get one,
with what workload, and which migrationState write follows which QEMU state."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sod_testbed.handler_player import (
    REAL_VM_ANNOTATION,
    PlayerConfig,
    choose_backend,
    guest_memory_mib,
    parse_real_vm,
    real_migration_step,
)
from sod_testbed.qemu.backend import MigrationView
from sod_testbed.qemu.vm import Workload

T0 = dt.datetime(2026, 12, 7, 0, 53, 20, tzinfo=dt.UTC).timestamp()


def _vmi(annotations: dict[str, str] | None = None, memory: str = "1Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": "v", "annotations": annotations or {}},
        "spec": {"domain": {"memory": {"guest": memory}}},
    }


@pytest.mark.parametrize(
    ("value", "workload"),
    [
        ("idle", Workload()),
        ("true", Workload()),
        ("", Workload()),
        ("dirty:30:256", Workload.dirty(30, 256)),
        ("dirty:max:128", Workload.dirty(0, 128)),
        ("Dirty:0:64", Workload.dirty(0, 64)),
    ],
)
def test_the_annotation_names_the_workload(value: str, workload: Workload) -> None:
    assert parse_real_vm(value) == workload


@pytest.mark.parametrize(
    "value", ["busy", "dirty:30", "dirty:fast:256", "dirty:30:10", "dirty:30:0"]
)
def test_a_malformed_annotation_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=REAL_VM_ANNOTATION):
        parse_real_vm(value)


def test_the_annotation_decides_and_otherwise_the_first_n_vmis_are_real() -> None:
    annotated = _vmi({REAL_VM_ANNOTATION: "dirty:60:256"})
    assert choose_backend(annotated, chosen_by_option=5, real_vms=0) == Workload.dirty(60, 256)
    assert choose_backend(_vmi(), chosen_by_option=0, real_vms=2) == Workload()
    assert choose_backend(_vmi(), chosen_by_option=1, real_vms=2) == Workload()
    assert choose_backend(_vmi(), chosen_by_option=2, real_vms=2) is None
    assert choose_backend(_vmi(), chosen_by_option=0, real_vms=0) is None


def test_guest_memory_is_the_vmis_capped() -> None:
    assert guest_memory_mib(_vmi(memory="1Gi"), 512) == 512
    assert guest_memory_mib(_vmi(memory="256Mi"), 512) == 256


def test_a_real_migration_is_written_step_by_step_as_qemu_reports_it() -> None:
    state: dict[str, Any] = {"targetNode": "n2", "sourceNode": "n1"}
    assert real_migration_step(state, None, held=False, aborted=False).action == "prepare"
    view = MigrationView()
    assert real_migration_step(state, view, held=False, aborted=False).action == "wait"
    view = MigrationView(target_port=4444)
    step = real_migration_step(state, view, held=False, aborted=False)
    assert step.action == "target-ready"
    assert step.fields == {
        "targetNodeAddress": "127.0.0.1",
        "targetDirectMigrationNodePorts": {"4444": 0},
    }
    state.update(step.fields)
    assert real_migration_step(state, view, held=False, aborted=False).action == "release"
    assert real_migration_step(state, view, held=True, aborted=False).action == "wait"
    view = MigrationView(target_port=4444, released=True)
    assert real_migration_step(state, view, held=False, aborted=False).action == "wait"
    view = MigrationView(target_port=4444, released=True, started_at=T0)
    step = real_migration_step(state, view, held=False, aborted=False)
    assert step.action == "started"
    assert step.fields == {"startTimestamp": "2026-12-07T00:53:20Z", "mode": "PreCopy"}
    state.update(step.fields)
    assert real_migration_step(state, view, held=False, aborted=False).action == "wait"
    done = MigrationView(4444, True, T0, "PreCopy", T0 + 61, "ok")
    step = real_migration_step(state, done, held=False, aborted=False)
    assert step.action == "succeeded"
    assert step.fields == {"endTimestamp": "2026-12-07T00:54:21Z"}


def test_a_failed_real_migration_carries_qemus_reason() -> None:
    state = {"targetNode": "n2", "targetNodeAddress": "127.0.0.1", "startTimestamp": "x"}
    view = MigrationView(4444, True, T0, "PreCopy", T0 + 60, "failed", "QEMU: cancelled")
    step = real_migration_step(state, view, held=False, aborted=False)
    assert step.action == "failed"
    assert step.fields == {
        "failed": True,
        "completed": True,
        "failureReason": "QEMU: cancelled",
        "endTimestamp": "2026-12-07T00:54:20Z",
    }


def test_an_abort_is_honoured_until_the_source_starts() -> None:
    state: dict[str, Any] = {"targetNode": "n2", "abortRequested": True}
    assert real_migration_step(state, None, held=False, aborted=True).action == "abort"
    state["targetNodeAddress"] = "127.0.0.1"
    ready = MigrationView(target_port=4444)
    assert real_migration_step(state, ready, held=False, aborted=True).action == "abort"
    gone = MigrationView(4444, False, None, "PreCopy", T0, "failed", "Migration aborted")
    step = real_migration_step(state, gone, held=False, aborted=True)
    assert step.action == "failed"
    assert step.fields["abortStatus"] == "Succeeded"
    assert step.fields["failureReason"] == "Migration aborted"
    # Once the source sends, QEMU runs to its end: a completed migration is a completed one.
    sent = MigrationView(4444, True, T0, "PreCopy", T0 + 1, "ok")
    state["startTimestamp"] = "x"
    assert real_migration_step(state, sent, held=False, aborted=True).action == "succeeded"


def test_the_target_address_is_where_the_destination_qemu_listens() -> None:
    """On node namespaces (`--real-link netns`) that is the target node's address."""
    view = MigrationView(target_port=4444, target_address="10.78.0.3")
    step = real_migration_step({"targetNode": "n2"}, view, held=False, aborted=False)
    assert step.fields["targetNodeAddress"] == "10.78.0.3"


def test_the_shaped_link_reaches_the_player_process_and_lifts_qemus_cap() -> None:
    """`sandbox up --real-link netns`: the player's command line names the link, and QEMU's own
    cap is off (the nodes' shaped NICs limit the stop-and-copy too); loopback keeps the cap."""
    netns = PlayerConfig(real_link="netns")
    assert "--real-link=netns" in netns.argv()
    assert netns.migration_options(forced_failure=False).max_bandwidth_bytes is None
    loopback = PlayerConfig().migration_options(forced_failure=False)
    assert loopback.max_bandwidth_bytes == PlayerConfig().real_bandwidth_bytes
