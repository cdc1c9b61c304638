"""The end-to-end revocation timeline of bench/migration_e2e.py from synthetic watch events
(pure; no cluster, no QEMU): stages in causal order with the PREAMBLE's names, a stage never
observed is absent, and the report's tables and figures."""

from __future__ import annotations

from typing import Any

from bench import migration_e2e as e2e
from bench.stats import Result

NODE, VMI, UID = "hyperwall-1", "vm", "mig-1"
LABEL = "sod.dev/profile.hyperwall"


def natt(rejected: bool) -> dict[str, Any]:
    result = "Rejected" if rejected else "Verified"
    return {
        "metadata": {"name": NODE},
        "status": {"verdicts": [{"profile": "hyperwall", "result": result}]},
    }


def node(labelled: bool) -> dict[str, Any]:
    labels = {e2e.profile_label("hyperwall"): "verified"} if labelled else {}
    return {"metadata": {"name": NODE, "labels": labels}}


def vmim() -> dict[str, Any]:
    return {"metadata": {"name": "m", "uid": UID}, "spec": {"vmiName": VMI}}


def pod(node_name: str | None) -> dict[str, Any]:
    spec = {"nodeName": node_name} if node_name else {}
    return {"metadata": {"name": "p", "labels": {"kubevirt.io/migrationJobUID": UID}}, "spec": spec}


def vmi(on: str, **state: Any) -> dict[str, Any]:
    status = {"phase": "Running", "nodeName": on, "migrationState": {"migrationUid": UID, **state}}
    return {"metadata": {"name": VMI}, "status": status}


EVENTS = [
    (100.2, "node", node(True)),  # an unrelated update: the label is still there
    (100.4, "natt", natt(True)),
    (100.5, "node", node(False)),
    (100.6, "vmim", vmim()),
    (100.7, "pod", pod(None)),
    (100.8, "pod", pod("hyperwall-2")),
    (101.5, "vmi", vmi(NODE, startTimestamp="2026-12-07T00:00:01Z")),
    (103.0, "vmi", vmi("hyperwall-2", startTimestamp="x", endTimestamp="y")),
    (103.2, "vmi", vmi("hyperwall-2", startTimestamp="x", endTimestamp="y", completed=True)),
]


def test_every_stage_at_its_first_matching_event() -> None:
    trial = e2e.timeline(EVENTS, 100.0, NODE, VMI, "hyperwall")
    assert trial["stages"] == {
        "evidence_changed": 100.0,
        "verdict_written": 100.4,
        "label_removed": 100.5,
        "vmim_created": 100.6,
        "target_scheduled": 100.8,
        "migration_started": 101.5,
        "vm_running": 103.2,
    }
    assert list(trial["stages"]) == list(e2e.STAGES)
    assert trial["target_node"] == "hyperwall-2"
    assert trial["kubevirt_start"] == "2026-12-07T00:00:01Z"
    assert trial["migration_uid"] == UID


def test_a_stage_never_observed_is_absent_and_so_are_those_after_it() -> None:
    no_label = [e for e in EVENTS if not (e[1] == "node" and not e[2]["metadata"]["labels"])]
    trial = e2e.timeline(no_label, 100.0, NODE, VMI, "hyperwall")
    assert set(trial["stages"]) == {"evidence_changed", "verdict_written"}


def test_a_failed_migration_is_reported_and_never_running() -> None:
    failed = [
        *EVENTS[:7],
        (
            102.0,
            "vmi",
            vmi(
                NODE,
                startTimestamp="x",
                completed=True,
                failed=True,
                failureReason="QEMU: cancelled",
            ),
        ),
    ]
    trial = e2e.timeline(failed, 100.0, NODE, VMI, "hyperwall")
    assert "vm_running" not in trial["stages"]
    assert trial["failed"] == "QEMU: cancelled"


def test_the_report_gives_the_stage_table_the_paper_span_and_qemus_figures() -> None:
    trial = e2e.timeline(EVENTS, 100.0, NODE, VMI, "hyperwall")
    trial["node"] = NODE
    trial["qemu"] = {
        "total_ms": 900,
        "downtime_ms": 60,
        "transferred_bytes": 88e6,
        "guest_ok": True,
        "guest_check": "ok",
    }
    result = Result(name="migration", title="t")
    e2e.report_into(result, [trial, trial])
    stages, every, runs = result.tables
    assert every["rows"][0] == [1, 100.0, "0.400", "0.500", "0.600", "0.800", "1.50", "3.20"]
    assert [r[0] for r in stages["rows"]] == list(e2e.STAGES)
    assert stages["rows"][-1][1:] == ["2/2", "3.20 [3.20-3.20]", "1.70 [1.70-1.70]"]
    assert runs["rows"][0][1:6] == ["hyperwall-1 -> hyperwall-2", "900", "60", "88.0", "ok"]
    paper = next(f for f in result.figures if f.reference_value is not None)
    assert paper.reference_value == e2e.PAPER_TRIGGER_SECONDS
    assert paper.samples == [101.5 - 100.5] * 2


def test_a_trial_whose_guest_failed_its_check_after_the_hand_off_is_not_running() -> None:
    good = e2e.timeline(EVENTS, 100.0, NODE, VMI, "hyperwall")
    good["qemu"] = {"guest_ok": True, "guest_check": "heartbeats 3..4 on the target"}
    dead = e2e.timeline(EVENTS, 100.0, NODE, VMI, "hyperwall")
    dead["qemu"] = {"guest_ok": False, "guest_check": "the boot checksum changed"}
    result = Result(name="migration", title="t")
    e2e.report_into(result, [good, dead])
    stages, _every, runs = result.tables
    assert stages["rows"][-1][1] == "1/2"
    assert runs["rows"][1][5] == "the boot checksum changed"
