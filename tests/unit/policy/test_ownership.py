"""One VM, one owner, whatever else claims it (issue 19 item 1).

Covers: the world keeps every SecureVM naming a VM; the owner is the one the VM names (owner
reference, then label), else the oldest valid claimant; the others are VirtualMachineConflict
with no NODE/PROFILE columns; removing a claimant never drops the owner; the owner keeps being
woken by its VM's, VMI's and node's events while a conflicting claimant exists.
Not covered: the operator's execution of these plans (tests/e2e/test_reliability_attacks_vm.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sod_operator.api.conditions import ConditionType, Reason
from sod_operator.policy.observed import VMView
from sod_operator.policy.plan import PatchVM

from tests.unit.policy.scenario import NS, T0, VM_A, VM_B, Scenario, actions, condition, node_labels


def _web_and_shadow() -> Scenario:
    """`web` (template) runs compliant on hw-1; `shadow` then claims VM web by vmRef."""
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("plain-1")
    s.securevm("web", VM_B, uid="uid-web").vm_for("web").vmi_for("web", "hw-1")
    s.securevm("shadow", VM_A, uid="uid-shadow", template=None, vmRef={"name": "web"})
    return s


def _created(s: Scenario, name: str, seconds: float) -> None:
    view = s.world.svms[(NS, name)]
    s.world.apply_securevm((NS, name), replace(view, created=T0 + timedelta(seconds=seconds)))


def test_a_second_claimant_does_not_take_the_vm_from_its_owner():
    s = _web_and_shadow()
    assert s.world.owner_of(NS, "web") == (NS, "web")
    assert condition(s.plan("web"), ConditionType.COMPLIANT) == ("True", Reason.COMPLIANT_NODE)
    shadow = s.plan("shadow")
    assert condition(shadow, ConditionType.READY) == ("False", Reason.VM_CONFLICT)
    assert not shadow.actions


def test_the_owner_keeps_reacting_to_its_vmi_while_another_claimant_exists():
    s = _web_and_shadow()
    # The attack of issue 19: the VM restarts on a plain node.
    affected = s.world.apply_vmi(
        (NS, "web"), replace(s.world.vmis[(NS, "web")], node_name="plain-1")
    )
    assert affected == {(NS, "web")}
    assert condition(s.plan("web"), ConditionType.COMPLIANT) == ("False", Reason.NODE_NOT_COMPLIANT)


def test_the_owner_is_woken_by_a_revocation_on_its_node():
    s = _web_and_shadow()
    assert (NS, "web") in s.world.apply_node("hw-1", node_labels(hostname="hw-1"), True, s.now)


def test_removing_a_claimant_never_drops_the_owner():
    s = _web_and_shadow()
    s.world.apply_securevm((NS, "shadow"), None)
    assert s.world.owner_of(NS, "web") == (NS, "web")
    assert s.world.apply_vmi((NS, "web"), s.world.vmis[(NS, "web")]) == {(NS, "web")}
    assert (NS, "web") in s.world.keys_on_node("hw-1")


def test_removing_the_owner_hands_the_vm_to_the_next_claimant_and_wakes_it():
    s = _web_and_shadow()
    assert s.world.apply_securevm((NS, "web"), None) == {(NS, "shadow")}
    assert s.world.owner_of(NS, "web") == (NS, "shadow")


def test_the_label_of_an_adopted_vm_names_its_owner_over_an_older_claimant():
    s = Scenario().profiles("hyperwall", "nohype", "tpm").node("hw-1", "hyperwall")
    s.securevm("late", VM_A, uid="uid-late", template=None, vmRef={"name": "legacy"})
    s.securevm("early", VM_A, uid="uid-early", template=None, vmRef={"name": "legacy"})
    _created(s, "early", 0)
    _created(s, "late", 10)
    s.world.apply_vm((NS, "legacy"), VMView(NS, "legacy", uid="vm", labels={}))
    assert s.world.owner_of(NS, "legacy") == (NS, "early")
    assert actions(s.plan("early"), PatchVM)  # adopts (labels) the VM
    assert condition(s.plan("late"), ConditionType.READY) == ("False", Reason.VM_CONFLICT)
    labelled = VMView(NS, "legacy", uid="vm", labels={"sod.dev/securevm": "late"})
    assert s.world.apply_vm((NS, "legacy"), labelled) == {(NS, "early"), (NS, "late")}
    assert s.world.owner_of(NS, "legacy") == (NS, "late")


def test_without_a_vm_the_oldest_valid_claimant_owns_then_the_uid_decides():
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    for name in ("b", "a"):
        s.securevm(name, VM_A, uid=f"uid-{name}", template=None, vmRef={"name": "x"})
    assert s.world.owner_of(NS, "x") == (NS, "a")  # no timestamps: by uid
    _created(s, "a", 10)
    _created(s, "b", 5)
    assert s.world.owner_of(NS, "x") == (NS, "b")
    broken = replace(s.world.svms[(NS, "b")], spec=None, spec_error="bad")
    s.world.apply_securevm((NS, "b"), broken)
    # An unparseable spec claims its own name (b), no longer x.
    assert s.world.owner_of(NS, "x") == (NS, "a")


def test_a_conflicting_securevm_shows_no_node_or_profile():
    s = _web_and_shadow()
    shadow = s.world.svms[(NS, "shadow")]
    stale = s.plan("web").status.model_copy()
    s.world.update_status((NS, "shadow"), replace(shadow, status=stale))
    assert stale.node_name == "hw-1"
    plan = s.plan("shadow")
    assert plan.status.node_name is None
    assert plan.status.node_profile is None
    assert condition(plan, ConditionType.COMPLIANT) == ("Unknown", Reason.VM_CONFLICT)
