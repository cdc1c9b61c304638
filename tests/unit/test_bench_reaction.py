"""bench.reaction: a trial's timeline from the watches' events (pure; no cluster, no clock),
and the report it makes from timelines."""

from __future__ import annotations

import pytest

from bench import reaction
from bench.stats import Result

NS, VM, NODE, LABEL = "revoke", "revoke-me", "hyperwall-1", "profile.hyperwall"
UID = "uid-1"


def _vmi(phase="Running", node=NODE, **mig):
    return {"metadata": {"name": VM}, "status": {"phase": phase, "nodeName": node, **(
        {"migrationState": mig} if mig else {})}}  # fmt: skip


def _events(t0=100.0):
    return {
        "node": [
            (t0 - 5, ("", NODE), {"metadata": {"labels": {}}}),  # before the trial: ignored
            (t0 + 0.01, ("", "hyperwall-2"), {"metadata": {"labels": {}}}),
            (t0 + 0.02, ("", NODE), {"metadata": {"labels": {"other": "x"}}}),
        ],
        "vmim": [
            (t0 + 0.05, (NS, "m1"), {"metadata": {"uid": UID}, "spec": {"vmiName": VM}}),
        ],
        "pod": [
            (
                t0 + 0.06,
                (NS, "virt-launcher-x"),
                {  # not yet scheduled
                    "metadata": {"labels": {reaction.MIGRATION_JOB_LABEL: UID}},
                    "spec": {},
                },
            ),
            (
                t0 + 0.08,
                (NS, "virt-launcher-x"),
                {
                    "metadata": {"labels": {reaction.MIGRATION_JOB_LABEL: UID}},
                    "spec": {"nodeName": "hyperwall-2"},
                },
            ),
        ],
        "vmi": [
            (t0 + 0.09, (NS, "another"), _vmi(migrationUid=UID, startTimestamp="x")),
            (t0 + 0.10, (NS, VM), _vmi(migrationUid=UID, targetNode="hyperwall-2")),
            (
                t0 + 0.20,
                (NS, VM),
                _vmi(
                    migrationUid=UID,
                    targetNode="hyperwall-2",
                    startTimestamp="1970-01-01T00:01:40Z",
                ),
            ),
            (
                t0 + 9.0,
                (NS, VM),
                _vmi(
                    node="hyperwall-2",
                    migrationUid=UID,
                    targetNode="hyperwall-2",
                    startTimestamp="1970-01-01T00:01:40Z",
                    completed=True,
                ),
            ),
        ],
    }


def test_trial_timeline_takes_the_first_observation_of_each_stage():
    tl, stamp = reaction.trial_timeline(_events(), 100.0, NS, VM, node=NODE, label=LABEL)
    assert tl == pytest.approx(
        {
            "label_removed": 100.02,
            "vmim_created": 100.05,
            "target_scheduled": 100.08,
            "migration_started": 100.20,
            "vm_running": 109.0,
        }
    )
    assert stamp == pytest.approx(100.0)
    assert list(tl) == [s for s in reaction.LABEL_STAGES if s in tl]


def _natt(result, profile="hyperwall"):
    verdicts = [{"profile": "tpm", "result": "Verified"}, {"profile": profile, "result": result}]
    return {"metadata": {"name": NODE}, "status": {"verdicts": verdicts}}


def test_verdict_written_is_the_first_rejection_of_the_profile_on_that_node():
    events = _events()
    events["natt"] = [
        (100.005, ("", NODE), _natt("Verified")),
        (100.008, ("", "hyperwall-2"), _natt("Rejected")),
        (100.009, ("", NODE), _natt("Rejected", profile="tpm")),
        (100.01, ("", NODE), _natt("Rejected")),
    ]
    tl, _ = reaction.trial_timeline(events, 100.0, NS, VM, NODE, LABEL, "hyperwall")
    assert tl["verdict_written"] == pytest.approx(100.01)
    assert list(tl)[:2] == ["verdict_written", "label_removed"]


def test_stages_not_yet_observed_are_absent():
    events = _events()
    events["vmi"] = events["vmi"][:2]
    tl, stamp = reaction.trial_timeline(events, 100.0, NS, VM)
    assert set(tl) == {"vmim_created", "target_scheduled"}
    assert stamp is None
    events["vmim"] = []
    assert reaction.trial_timeline(events, 100.0, NS, VM) == ({}, None)


def test_a_migration_of_another_vm_or_before_the_trial_does_not_count():
    tl, _ = reaction.trial_timeline(_events(), 100.0, NS, "other-vm")
    assert tl == {}
    tl, _ = reaction.trial_timeline(_events(), 200.0, NS, VM, node=NODE, label=LABEL)
    assert tl == {}


def test_report_compares_with_the_paper_only_on_decision_to_migration_started():
    tl, stamp = reaction.trial_timeline(_events(), 100.0, NS, VM, node=NODE, label=LABEL)
    raised = [({"request_raised": 99.9, **{k: v for k, v in tl.items() if k != "label_removed"}},
               stamp)]  # fmt: skip
    result = Result(name="reaction", title="t")
    events = _events()
    events["natt"] = [(100.01, ("", NODE), _natt("Rejected"))]
    real, _ = reaction.trial_timeline(events, 100.0, NS, VM, NODE, LABEL, "hyperwall")
    broken = [({"evidence_changed": 100.0, **real}, stamp)]
    reaction.decision_figures(result, [(tl, stamp)], raised)
    reaction.report(result, [(tl, stamp)], raised, broken)
    assert next(
        f for f in result.figures if f.id == "evidence_changed_to_vmim_created"
    ).samples == [pytest.approx(50.0)]
    with_paper = {f.id for f in result.figures if f.reference_value is not None}
    assert with_paper == {
        "label_removed_to_migration_started",
        "request_raised_to_migration_started",
    }
    assert {f.id for f in result.figures} >= {
        "label_removed_to_vmim_created",
        "request_raised_to_vmim_created",
    }
    revoke = next(f for f in result.figures if f.id == "label_removed_to_migration_started")
    assert revoke.samples == pytest.approx([180.0])
    assert len(result.tables) == 4
    assert all(f.to_json()["summary"]["n"] == 1 for f in result.figures)


def test_the_baseline_finds_the_figures_of_its_spans():
    from bench import baseline

    tl, stamp = reaction.trial_timeline(_events(), 100.0, NS, VM, node=NODE, label=LABEL)
    result = Result(name="reaction", title="t")
    reaction.decision_figures(result, [(tl, stamp)], [])
    matched = {
        f.id
        for f in result.figures
        for end in ("vmim_created", "migration_started")
        if baseline.figure_matches(f, "label_removed", end)
    }
    assert matched == {"label_removed_to_vmim_created", "label_removed_to_migration_started"}


def _sample(name: str, labels: dict[str, str], total: float, calls: int) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}_sum{{{text}}} {total}\n{name}_count{{{text}}} {calls}\n"


def _exposition() -> str:
    request = "apiserver_request_duration_seconds"
    webhook = "apiserver_admission_webhook_admission_duration_seconds"
    vmim = {"resource": "virtualmachineinstancemigrations", "verb": "POST"}
    create = {"operation": "CREATE", "type": "validating"}
    validator = {"name": "migration-create-validator.kubevirt.io", **create}
    return (
        f'{request}_bucket{{resource="x",verb="POST",le="0.1"}} 3\n'
        + _sample(request, vmim, 0.09, 3)
        + _sample(request, {"resource": "nodes", "verb": "PATCH"}, 1, 4)
        + _sample(webhook, {**validator, "rejected": "false"}, 0.02, 3)
        + _sample(webhook, {**validator, "rejected": "true"}, 0.02, 1)
        + _sample(webhook, {"name": "virtualmachine-validator.kubevirt.io", **create}, 5, 9)
    )


def test_the_vmim_write_path_is_read_from_the_apiservers_own_histograms():
    _, columns, rows, _ = reaction.write_path_table(_exposition())
    assert columns == ["histogram", "labels", "calls", "mean (ms)"]
    post, webhook = rows
    assert post[0] == "request_duration_seconds"
    assert post[2:] == [3, pytest.approx(30.0)]
    assert "virtualmachineinstancemigrations" in post[1]
    # rejected and admitted calls of one webhook are one row; other kinds' webhooks are left out
    assert webhook[2:] == [4, pytest.approx(10.0)]
    assert "migration-create-validator" in webhook[1]
