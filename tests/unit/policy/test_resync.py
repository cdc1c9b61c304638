"""What the periodic full re-check counts as a correction (`policy.resync.correction`).

Covers: a plan with actions or a slot request; a changed Ready/Compliant status or reason, node
or profile; nothing for a re-plan that leaves the claim as it was (e.g. a countdown in a
message). Not covered: the controller's loop (tests/unit/adapters/test_controller.py).
"""

from __future__ import annotations

from dataclasses import replace

from sod_operator.policy.resync import correction

from tests.unit.policy.scenario import NS, VM_B, Scenario, node_labels


def _converged() -> Scenario:
    s = Scenario().profiles("hyperwall", "nohype", "tpm").node("hw-1", "hyperwall")
    s.node("hw-2", "hyperwall")
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", "hw-1")
    return s.apply_status("vm", s.plan("vm"))


def test_a_converged_securevm_needs_no_correction():
    s = _converged()
    assert correction(s.world.svms[(NS, "vm")].status, s.plan("vm")) is None


def test_a_missed_revocation_is_a_correction_of_actions():
    s = _converged()
    s.world.apply_node("hw-1", node_labels(hostname="hw-1"), True, s.now)
    assert correction(s.world.svms[(NS, "vm")].status, s.plan("vm")) == "actions"


def test_a_stale_claim_is_a_correction_of_the_claim():
    s = _converged()
    current = s.world.svms[(NS, "vm")].status
    stale = replace(s.world.svms[(NS, "vm")], status=current.model_copy(update={"node_name": "x"}))
    s.world.update_status((NS, "vm"), stale)
    assert correction(stale.status, s.plan("vm")) == "claim"
