"""bench.baseline's pure parts: trial scheduling, the VM it creates, timelines from observed
objects, figure matching (no cluster, no clock)."""

from __future__ import annotations

import random

import pytest

from bench import baseline
from bench.stats import Figure, Result
from bench.timeline import REVOCATION_STAGES

LABEL = "profile.sod.dev/hyperwall"


def test_moments_fall_one_in_each_slice_of_the_interval():
    rng = random.Random(1)
    for k in (1, 3, 5):
        moments = baseline.schedule_moments(100.0, 160.0, k, rng)
        assert len(moments) == k
        for i, m in enumerate(moments):
            assert 100.0 + i * 60.0 / k <= m < 100.0 + (i + 1) * 60.0 / k
    assert baseline.schedule_moments(10.0, 10.0, 3, rng) == []


def test_plans_fit_the_budget():
    full = baseline.Plan.full()
    assert [i for i, _ in full.runs] == [baseline.DEFAULT_INTERVAL, baseline.SHORTEST_INTERVAL]
    assert full.total_seconds() <= 8 * 60
    assert full.per_cycle <= 5  # KubeVirt's parallelMigrationsPerCluster: none queues
    assert baseline.Plan.quick().total_seconds() < full.total_seconds()


def test_vm_requires_the_verified_profile_and_live_migrates_on_eviction():
    from sod_operator.api.constants import profile_label

    vm = baseline.vm_manifest("ns", "vm-0", "hyperwall")
    assert vm["kind"] == "VirtualMachine"
    spec = vm["spec"]["template"]["spec"]
    assert spec["evictionStrategy"] == "LiveMigrate"
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = {e["key"]: e["values"] for e in term["matchExpressions"]}
    assert keys[profile_label("hyperwall")] == ["verified"]
    assert baseline.POOL_LABEL in keys


def _node(name, verified, ts):
    from sod_operator.api.constants import profile_label

    labels = {profile_label("hyperwall"): "verified"} if verified else {}
    return (ts, "node", {"metadata": {"name": name, "labels": labels}})


def _vmim(ts, vmi="vm-0", uid="u1"):
    meta = {"name": "kubevirt-evacuation-abc", "namespace": "ns", "uid": uid}
    return (ts, "vmim", {"metadata": meta, "spec": {"vmiName": vmi}})


def _pod(ts, uid="u1", node="n2"):
    meta = {
        "name": "virt-launcher-vm-0-t",
        "namespace": "ns",
        "labels": {baseline.MIGRATION_JOB_LABEL: uid},
    }
    return (ts, "pod", {"metadata": meta, "spec": {"nodeName": node} if node else {}})


def _vmi(ts, state, phase="Running", node="n1", affinity=None):
    meta = {"name": "vm-0", "namespace": "ns"}
    status = {"phase": phase, "nodeName": node, "migrationState": state}
    return (ts, "vmi", {"metadata": meta, "spec": {"affinity": affinity}, "status": status})


def _migration(t0):
    started = {"migrationUid": "u1", "startTimestamp": "2026-12-07T02:00:00Z", "targetNode": "n2"}
    done = {**started, "completed": True, "endTimestamp": "2026-12-07T02:00:01Z"}
    return [
        _vmim(t0 + 1),
        _pod(t0 + 1.5, node=None),
        _pod(t0 + 2),
        _vmi(t0 + 3, started),
        _vmi(t0 + 4, done, node="n1"),  # completed, not yet handed over
        _vmi(t0 + 5, done, node="n2"),
    ]


def test_revocation_timeline_from_observed_objects():
    events = [
        _node("n1", True, 9.0),
        _vmim(9.5, uid="old"),  # an earlier migration: not this trial's
        _node("n2", False, 10.1),  # another node
        _node("n1", False, 10.2),
        *_migration(10.2),
    ]
    tl, info = baseline.revocation_timeline(events, "ns", "vm-0", "n1", revoked_at=10.0)
    assert tl == {
        "label_removed": 10.2,
        "vmim_created": 11.2,
        "target_scheduled": 12.2,
        "migration_started": 13.2,
        "vm_running": 15.2,
    }
    assert set(tl) <= set(REVOCATION_STAGES)
    assert info["kubevirt_start_timestamp"] == "2026-12-07T02:00:00Z"
    assert info["target_node"] == "n2"


def test_revocation_without_a_migration_stops_at_label_removed():
    tl, _ = baseline.revocation_timeline([_node("n1", False, 5.0)], "ns", "vm-0", "n1", 4.0)
    assert tl == {"label_removed": 5.0}
    assert baseline.revocation_timeline([], "ns", "vm-0", "n1", 4.0) == ({}, {})


def test_request_without_migration_records_only_the_request_and_the_window():
    events = [
        _vmi(20.0, {}, affinity={"tpm-measured-boot": 1}),
        _vmi(20.4, {}, affinity={"x": "profile.sod.dev/hyperwall"}),
    ]
    tl, info = baseline.request_outcome(events, "ns", "vm-0", raised_at=20.1, until=400.1)
    assert tl == {"request_raised": 20.1}
    assert info["vmi_affinity_copied_ms"] == pytest.approx(300.0)
    assert info["window_s"] == pytest.approx(380.0)


def test_request_migration_after_the_window_is_not_counted():
    tl, _ = baseline.request_outcome(_migration(30.0), "ns", "vm-0", raised_at=30.0, until=31.5)
    assert set(tl) == {"request_raised", "vmim_created"}


def _fig(fid, label):
    return Figure(id=fid, label=label, unit="ms", better="lower", samples=[1.0])


def test_baseline_samples_go_to_matching_figures_and_a_note_when_none():
    res = Result(name="r", title="r")
    res.figures = [
        _fig("revocation_label_removed_to_migration_started", "x"),
        _fig("other", "request_raised -> vmim_created"),
        _fig("unrelated", "vmim_created -> target_scheduled"),
    ]
    tls = [{"label_removed": 0.0, "migration_started": 2.0}]
    baseline._attach(res, tls, "label_removed", "desched", "no sample")
    assert res.figures[0].baseline_samples == [2000.0]
    assert res.figures[2].baseline_samples is None
    baseline._attach(res, [{"request_raised": 0.0}], "request_raised", "edit", "no migration")
    assert res.figures[1].baseline_samples is None
    assert "no migration" in res.figures[1].note


def test_a_vm_has_moved_only_once_its_migration_completed_on_the_target():
    started = {"migrationUid": "u1", "startTimestamp": "t", "targetNode": "n2"}
    done = {**started, "completed": True, "endTimestamp": "t"}
    assert not baseline.moved(_vmi(0, started, node="n1")[2], "n1")
    assert not baseline.moved(_vmi(0, done, node="n1")[2], "n1")  # not yet handed over
    assert baseline.moved(_vmi(0, done, node="n2")[2], "n1")
    assert not baseline.moved(_vmi(0, {**done, "failed": True}, node="n2")[2], "n1")


def test_eviction_moment_is_the_vms_own_launcher_pod():
    evictions = [(5.0, "baseline-revoke/virt-launcher-revoke-1-abc"),
                 (6.0, "baseline-revoke/virt-launcher-revoke-10-abc"),
                 (7.0, "baseline-revoke/virt-launcher-revoke-1-def")]  # fmt: skip
    assert baseline.evicted_at(evictions, "revoke-1", 0.0) == 5.0
    assert baseline.evicted_at(evictions, "revoke-1", 5.5) == 7.0
    assert baseline.evicted_at(evictions, "revoke-10", 0.0) == 6.0
    assert baseline.evicted_at(evictions, "revoke-2", 0.0) is None
