"""Eligibility honours every constraint the scheduler applies to the launcher pod that the
operator can know (issue 19 item 4): the template's nodeSelector, the tenant's required
affinity terms, and its tolerations against the nodes' NoSchedule/NoExecute taints.

Covers: an adopted VM pinned by nodeSelector to a plain node gets no doomed migration
(NoCompliantNode instead); a template's nodeSelector narrows the targets; a tainted node is
a target only for a template that tolerates the taint; Kubernetes' default not-ready /
unreachable NoExecute tolerations; a taint change wakes the SecureVMs on the node.
Not covered: KubeVirt's own node selectors (kubevirt.io/schedulable, CPU model), which the
operator does not model.
"""

from __future__ import annotations

import copy
from typing import Any

from sod_operator.api.conditions import ConditionType, Reason
from sod_operator.policy.observed import VMIView, VMView, vm_from_body
from sod_operator.policy.placement import LauncherConstraints, NodeView, tolerates
from sod_operator.policy.plan import CreateMigration, PatchVM

from tests.unit.policy.scenario import (
    NS,
    TEMPLATE,
    VM_B,
    Scenario,
    actions,
    condition,
    node_labels,
)

NO_SCHEDULE = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def _template(**vmi_spec: Any) -> dict[str, Any]:
    template = copy.deepcopy(TEMPLATE)
    template["template"]["spec"].update(vmi_spec)
    return template


def test_an_adopted_vm_pinned_by_node_selector_gets_no_doomed_migration():
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("plain-1")
    s.securevm("wrapper", VM_B, template=None, vmRef={"name": "legacy"})
    pinned = {"kubernetes.io/hostname": "plain-1"}

    def legacy(affinity: dict[str, Any] | None) -> VMView:
        vmi_spec: dict[str, Any] = {"nodeSelector": pinned}
        if affinity:
            vmi_spec["affinity"] = affinity
        return vm_from_body(
            {
                "metadata": {"name": "legacy", "namespace": NS, "uid": "legacy",
                             "labels": {"sod.dev/securevm": "wrapper"}},
                "spec": {"template": {"spec": vmi_spec}},
            }
        )  # fmt: skip

    s.world.apply_vm((NS, "legacy"), legacy(None))
    (patch,) = actions(s.plan("wrapper"), PatchVM)
    affinity = patch.patch["spec"]["template"]["spec"]["affinity"]
    s.world.apply_vm((NS, "legacy"), legacy(affinity))
    s.world.apply_vmi(
        (NS, "legacy"),
        VMIView(NS, "legacy", uid="u", phase="Running", node_name="plain-1",
                reported_node="plain-1", affinity=affinity),
    )  # fmt: skip
    s.launcher_pod("legacy", "u", "plain-1")
    plan = s.plan("wrapper")
    assert plan.status.eligible_nodes == 0
    assert not actions(plan, CreateMigration)
    assert condition(plan, ConditionType.RELOCATING) == ("False", Reason.NO_COMPLIANT_NODE)


def test_a_templates_node_selector_narrows_the_targets():
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall")
    s.world.apply_node(
        "hw-3", {**node_labels("hyperwall", hostname="hw-3"), "zone": "b"}, True, s.now
    )
    s.securevm("vm", VM_B, template=_template(nodeSelector={"zone": "b"}))
    assert s.plan("vm").status.eligible_nodes == 1


def test_a_tainted_node_is_a_target_only_for_a_template_that_tolerates_it():
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall")
    s.world.apply_node(
        "hw-2", node_labels("hyperwall", hostname="hw-2"), True, s.now, [NO_SCHEDULE]
    )
    s.securevm("plain", VM_B)
    assert s.plan("plain").status.eligible_nodes == 1
    toleration = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    s.securevm("tolerant", VM_B, template=_template(tolerations=[toleration]))
    assert s.plan("tolerant").status.eligible_nodes == 2


def test_toleration_semantics_follow_kubernetes():
    assert tolerates({"operator": "Exists"}, NO_SCHEDULE)
    assert tolerates({"key": "dedicated", "operator": "Exists"}, NO_SCHEDULE)
    assert not tolerates({"key": "dedicated", "value": "cpu"}, NO_SCHEDULE)
    assert not tolerates(
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, NO_SCHEDULE
    )
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    node = NodeView("n", {}, True, (unreachable,))
    assert LauncherConstraints().admits(node)  # every pod gets the default toleration
    assert not LauncherConstraints().admits(NodeView("n", {}, True, (NO_SCHEDULE,)))


def test_a_taint_change_wakes_the_securevms_on_the_node():
    s = Scenario().profiles("hyperwall", "nohype", "tpm").node("hw-1", "hyperwall")
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", "hw-1")
    labels = node_labels("hyperwall", hostname="hw-1")
    assert (NS, "vm") in s.world.apply_node("hw-1", labels, True, s.now, [NO_SCHEDULE])
