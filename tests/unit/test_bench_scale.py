"""The scale benchmark's pure helpers: the nested layout that makes the revoked nodes hold
exactly the affected count, the first wave KubeVirt's limits allow, body cloning, the memoized
snapshot of the full-scan baseline, and the cost row (no timing is asserted)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import scale

SIZES = (1, 10, 100, 1000)


def test_layout_nests_the_affected_sets_and_puts_the_rest_in_bulk():
    assert scale.layout(5000, SIZES) == {"g1": 1, "g10": 9, "g100": 90, "g1000": 900, "bulk": 4000}
    assert scale.layout(1000, SIZES) == {"g1": 1, "g10": 9, "g100": 90, "g1000": 900, "bulk": 0}
    assert scale.layout(60, (1, 10, 40)) == {"g1": 1, "g10": 9, "g40": 30, "bulk": 20}
    assert scale.layout(50, SIZES) == {"g1": 1, "g10": 9, "bulk": 40}


def test_revoking_groups_up_to_a_size_affects_exactly_that_size():
    groups = scale.assign(5000, SIZES)
    assert len(groups) == 5000
    for size in SIZES:
        revoked = set(scale.revoked_groups(size, SIZES))
        assert sum(1 for g in groups if g in revoked) == size
    with pytest.raises(ValueError, match="not one of"):
        scale.revoked_groups(7, SIZES)


def test_assignment_is_stable_as_the_fleet_grows():
    small, large = scale.assign(1000, SIZES), scale.assign(5000, SIZES)
    assert large[:1000] == small
    assert set(large[1000:]) == {scale.BULK}


def test_first_wave_follows_kubevirts_limits():
    assert scale.first_wave([1], 5, 2) == 1
    assert scale.first_wave([1, 9], 5, 2) == 3
    assert scale.first_wave([1, 9, 90], 5, 2) == 5
    assert scale.first_wave([1, 9, 90, 900], 5, 2) == 5
    assert scale.first_wave([], 5, 2) == 0


def test_group_affinity_admits_the_group_and_the_haven():
    expr = scale.group_affinity("g10")["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr == {"key": scale.GROUP_LABEL, "operator": "In", "values": ["g10", "haven"]}


def test_replace_strings_copies_and_replaces_exact_strings_only():
    body = {"a": ["g1000", "haven", "g10000"], "b": {"c": "g1000"}, "n": 3}
    out = scale.replace_strings(body, {"g1000": "bulk"})
    assert out == {"a": ["bulk", "haven", "g10000"], "b": {"c": "bulk"}, "n": 3}
    assert body["b"]["c"] == "g1000"


def _template():
    from sod_operator.adapters.controller import Kind

    svm = {"metadata": {"name": "t", "uid": "s0"}, "spec": {"aff": ["g1000", "haven"]}}
    vm = {
        "metadata": {
            "name": "t",
            "uid": "v0",
            "labels": {"sod.dev/securevm": "t"},
            "ownerReferences": [{"kind": "SecureVM", "name": "t", "uid": "s0"}],
        }
    }
    vmi = {
        "metadata": {
            "name": "t",
            "uid": "i0",
            "labels": {"kubevirt.io/nodeName": "g1000-node"},
            "ownerReferences": [{"kind": "VirtualMachine", "name": "t", "uid": "v0"}],
        },
        "status": {"nodeName": "g1000-node"},
    }
    pod = {
        "metadata": {"name": "virt-launcher-t-x", "labels": {"kubevirt.io/created-by": "i0"}},
        "spec": {"nodeName": "g1000-node"},
    }
    return {Kind.SECUREVM: [svm], Kind.VM: [vm], Kind.VMI: [vmi], Kind.POD: [pod]}


def test_clone_renames_rewires_and_moves_every_body():
    from sod_operator.adapters.controller import Kind

    template = _template()
    out = dict((k, b) for k, b in scale.clone(template, "svm-00042", "bulk-03", {"g1000": "bulk"}))
    svm, vm, vmi, pod = out[Kind.SECUREVM], out[Kind.VM], out[Kind.VMI], out[Kind.POD]
    assert {b["metadata"]["name"] for b in (svm, vm, vmi)} == {"svm-00042"}
    assert svm["spec"]["aff"] == ["bulk", "haven"]
    assert vm["metadata"]["ownerReferences"][0]["uid"] == svm["metadata"]["uid"]
    assert vmi["metadata"]["ownerReferences"][0]["uid"] == vm["metadata"]["uid"]
    assert vm["metadata"]["labels"]["sod.dev/securevm"] == "svm-00042"
    assert vmi["status"]["nodeName"] == vmi["metadata"]["labels"]["kubevirt.io/nodeName"]
    assert vmi["status"]["nodeName"] == pod["spec"]["nodeName"] == "bulk-03"
    assert pod["metadata"]["labels"]["kubevirt.io/created-by"] == vmi["metadata"]["uid"]
    assert template[Kind.VMI][0]["status"]["nodeName"] == "g1000-node"  # not mutated
    assert list(k for k, _ in scale.clone(template, "x", "n", {}))[-1] is Kind.SECUREVM


def test_memo_snapshot_answers_like_the_operators_snapshot():
    from sod_operator.policy.placement import NodeView
    from sod_operator.policy.plan import NodeSnapshot

    label = "sod.node-restriction.kubernetes.io/profile.hyperwall"
    nodes = {
        f"n{i}": NodeView(f"n{i}", {label: "verified", "g": "a" if i % 2 else "b"}, True)
        for i in range(6)
    }
    snap = NodeSnapshot(nodes, {"hyperwall": set(nodes)}, now=datetime(2026, 1, 1, tzinfo=UTC))
    memo = scale.memo_snapshot(snap)
    terms = [{"matchExpressions": [{"key": "g", "operator": "In", "values": ["a"]}]}]
    for t in ([], terms):
        assert memo.eligible(["hyperwall"], t) == snap.eligible(["hyperwall"], t)
        assert memo.eligible(["hyperwall"], t) == snap.eligible(["hyperwall"], t)  # memoized
    assert memo.at(snap.now) is memo
    assert memo.eligible(["other"], terms) == []


def test_cost_row_divides_by_affected_and_by_fleet():
    cost = scale.Cost(
        "in process", 1000, 10, [20.0, 40.0], [10.0, 30.0], 2,
        full_ms=[100.0], full_cpu_ms=[200.0],
    )  # fmt: skip
    row = dict(zip(scale.COST_COLUMNS, cost.row(), strict=True))
    assert row["revocation -> decision covers all affected ms"] == 30.0
    assert row["per affected VM: wall ms"] == 3.0
    assert row["per affected VM: CPU ms"] == 2.0
    assert row["per fleet VM: CPU us"] == 20.0
    assert row["full scan per fleet VM: CPU us"] == 200.0
    assert row["full scan CPU / ours"] == 10.0
    sandbox = scale.Cost("sandbox", 1000, 1, [5.0], [1.0], wave_ms=[7.0], wave=1)
    assert dict(zip(scale.COST_COLUMNS, sandbox.row(), strict=True))["full scan: wall ms"] == "-"


def test_step_reason_states_what_was_measured():
    step = scale.Step(5000, 10.0, 100.0, 3000, {"kube-apiserver": (150.0, 900.0)})
    text = step.reason(1000)
    assert "3,000 of 5,000" in text
    assert "20.0 placed/s" in text
    assert "kube-apiserver 150 s" in text


def test_tree_usage_counts_a_process_and_its_children():
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cpu, rss = scale.tree_usage(os.getpid())
        own_cpu, own_rss = scale.testbed.process_usage(os.getpid())
        assert cpu >= own_cpu
        assert rss > own_rss / 2**20  # the child's peak RSS is added
    finally:
        child.kill()
        child.wait()


def test_fleet_sizes_not_reached_in_the_sandbox_get_a_row_that_says_so():
    rows = scale.missing_rows((1000, 5000), {1000}, SIZES)
    assert len(rows) == 1
    assert len(rows[0]) == len(scale.COST_COLUMNS)
    assert rows[0][0].startswith("sandbox: not run")
    assert rows[0][1:3] == ["5,000", "1, 10, 100, 1,000"]
    assert scale.missing_rows((1000, 5000), {1000, 5000}, SIZES) == []
