"""Where a VM runs comes from what a tenant cannot write (issue 19 item 2).

Covers: a VMI's `status.nodeName` (tenant-writable: VMIs have no status subresource) is
compared with KubeVirt's `kubevirt.io/nodeName` label and the launcher pods' nodes, never
believed; a disagreement is NodeNotCompliant with a message naming it, never Compliant; a
forged status before a revocation does not hide the revocation; a migration's second pod is no
disagreement; a VMI whose launcher pod is not seen yet is not placed (no relocation on a watch
race); launcher pod parsing. Not covered: the operator watching pods (tests/e2e).
"""

from __future__ import annotations

from dataclasses import replace

from sod_operator.api.conditions import ConditionType, Reason
from sod_operator.policy.observed import (
    VMIView,
    confirm_placement,
    launcher_pod_from_body,
)
from sod_operator.policy.plan import CreateMigration

from tests.unit.policy.scenario import NS, VM_B, Scenario, actions, condition, node_labels


def _running_on(node: str) -> Scenario:
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("plain-1")
    return s.securevm("web", VM_B).vm_for("web").vmi_for("web", node)


def _forge_status(s: Scenario, node: str) -> None:
    vmi = s.world.vmis[(NS, "web")]
    s.world.apply_vmi((NS, "web"), replace(vmi, reported_node=node))


def test_a_tenant_written_status_node_does_not_make_a_vm_compliant():
    s = _running_on("plain-1")
    _forge_status(s, "hw-1")
    plan = s.plan("web")
    status, reason = condition(plan, ConditionType.COMPLIANT)
    assert (status, reason) == ("False", Reason.NODE_NOT_COMPLIANT)
    compliant = next(c for c in plan.status.conditions or [] if c.type == ConditionType.COMPLIANT)
    assert "status.nodeName says hw-1" in compliant.message
    assert plan.status.node_name == "plain-1"
    assert actions(plan, CreateMigration)  # relocated off the node it really runs on


def test_a_status_disagreeing_even_towards_a_plain_node_is_never_compliant():
    s = _running_on("hw-1")
    _forge_status(s, "plain-1")
    assert condition(s.plan("web"), ConditionType.COMPLIANT)[0] == "False"


def test_a_forged_status_before_a_revocation_does_not_hide_it():
    s = _running_on("hw-2")
    _forge_status(s, "hw-1")
    assert (NS, "web") in s.world.apply_node("hw-2", node_labels(hostname="hw-2"), True, s.now)
    plan = s.plan("web")
    assert condition(plan, ConditionType.COMPLIANT)[0] == "False"
    assert actions(plan, CreateMigration)


def test_a_label_no_launcher_pod_confirms_is_a_disagreement():
    vmi = VMIView(NS, "web", uid="u", phase="Running", node_name="hw-1", reported_node="hw-1")
    placed = confirm_placement(vmi, frozenset({"plain-1"}))
    assert placed.node_name == "plain-1"
    assert "launcher pod runs on plain-1" in placed.node_conflict


def test_a_migrations_second_pod_is_no_disagreement():
    vmi = VMIView(NS, "web", uid="u", phase="Running", node_name="hw-2", reported_node="hw-2")
    placed = confirm_placement(vmi, frozenset({"hw-1", "hw-2"}))
    assert placed == vmi


def test_before_its_launcher_pod_is_seen_a_vmi_is_not_placed():
    s = _running_on("hw-1")
    s.world.apply_launcher_pod((NS, "virt-launcher-web-hw-1"), None)
    plan = s.plan("web")
    assert plan.status.node_name is None
    assert condition(plan, ConditionType.COMPLIANT)[0] == "Unknown"
    assert not actions(plan, CreateMigration)


def test_launcher_pods_are_parsed_and_others_ignored():
    body = {
        "metadata": {
            "name": "virt-launcher-web-x",
            "namespace": NS,
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "u"},
        },
        "spec": {"nodeName": "hw-1"},
        "status": {"phase": "Succeeded"},
    }
    pod = launcher_pod_from_body(body)
    assert pod is not None
    assert (pod.vmi_uid, pod.node_name, pod.active) == ("u", "hw-1", False)
    body["metadata"]["labels"] = {"app": "other"}
    assert launcher_pod_from_body(body) is None
