"""The in-memory world's indexes: an event touches only the SecureVMs it affects.

Covers: node label change → only the SecureVMs whose VMI runs there (plus starved ones when a
node gains trust); profile change → only requests whose satisfying set or cost preferences
change; package change → only SecureVMs naming it; VMI moves update the node index; the
affected set does not grow with the fleet. Not covered: planning (test_relocation*.py).
"""

from __future__ import annotations

from sod_operator.api.v1alpha1.parsing import parse_model
from sod_operator.api.v1alpha1.security import SecurityPackageSpec

from tests.unit.policy.scenario import NS, VM_A, VM_B, Scenario, node_labels, profile_spec


def fleet(n_per_node: int, nodes: int = 4) -> Scenario:
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    for j in range(nodes):
        s.node(f"hw-{j}", "hyperwall")
    for j in range(nodes):
        for i in range(n_per_node):
            name = f"vm-{j}-{i}"
            s.securevm(name, VM_B if i % 2 else VM_A, uid=name).vm_for(name).vmi_for(
                name, f"hw-{j}"
            )
    return s


def test_label_removal_affects_only_the_vms_on_that_node_and_does_not_grow_with_the_fleet():
    for size in (5, 50):
        s = fleet(size)
        affected = s.world.apply_node("hw-0", node_labels(), True, s.now)
        assert affected == {(NS, f"vm-0-{i}") for i in range(size)}


def test_unrelated_label_changes_affect_nothing():
    s = fleet(3)
    assert (
        s.world.apply_node("hw-0", {**node_labels("hyperwall"), "team": "x"}, True, s.now) == set()
    )


def test_gaining_trust_wakes_starved_securevms():
    s = fleet(1)
    s.world.starved.add((NS, "waiting"))
    assert (NS, "waiting") in s.world.apply_node("new", node_labels("hyperwall"), True, s.now)


def test_profile_change_affects_only_requests_it_changes():
    s = fleet(4)
    vm_a = {k for k in s.world.svms if int(k[1].rsplit("-", 1)[1]) % 2 == 0}
    # tpm satisfies neither request: editing its description changes nothing.
    spec = profile_spec("tpm")
    assert s.world.apply_profile("tpm", spec.model_copy(update={"description": "edited"})) == set()
    # A new profile protecting from other VMs only, at the cheapest cost: VM-A gains a
    # satisfying profile (and a cheaper class), VM-B does not.
    cheap = profile_spec("nohype").model_copy(update={"cost": 1})
    assert s.world.apply_profile("cheap-basic", cheap) == vm_a


def test_package_change_affects_only_securevms_naming_it():
    s = fleet(2)
    pkg = parse_model(SecurityPackageSpec, {"options": ["Basic"]}, "spec")
    s.securevm("pkg-user", {"package": "basic"})
    assert s.world.apply_package("basic", pkg) == {(NS, "pkg-user")}
    assert s.world.resolution((NS, "pkg-user")).satisfying


def test_vmi_moving_updates_the_node_index():
    s = fleet(1)
    s.vmi_for("vm-0-0", "hw-1")
    assert (NS, "vm-0-0") not in s.world.keys_on_node("hw-0")
    assert (NS, "vm-0-0") in s.world.keys_on_node("hw-1")
    assert s.world.load["hw-1"] == 2


def test_revocation_time_is_recorded_for_flap_cooldown():
    s = fleet(1)
    s.later(5)
    s.world.apply_node("hw-2", node_labels(), True, s.now)
    assert s.world.revoked_at["hw-2"] == s.now
