"""What real KubeVirt does to the operator's migrations (issue 13 item 5): virt-api refuses a
migration at admission; virt-controller deletes a VMI's migrations with the VMI."""

from __future__ import annotations

from sod_operator.api.v1alpha1.securevm import RelocationResult
from sod_operator.policy.plan import CreateMigration

from tests.unit.policy.scenario import NS, VM_B, Scenario, actions, condition, node_labels

IN_FLIGHT = (
    'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
    "in-flight migration detected"
)


def revoked() -> Scenario:
    """VM-B on hw-1, whose hyperwall label was just removed; hw-2 is a compliant target."""
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("plain-1")
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", "hw-1")
    s.apply_status("vm", s.plan("vm"))
    s.node("hw-1")
    return s


def test_a_refused_migration_fails_the_attempt_with_the_reason_and_backs_off():
    s = revoked()
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(1)
    svm = s.world.svms[(NS, "vm")]
    s.world.migration_refusals[(NS, "vm")] = (svm.uid, mig.name, IN_FLIGHT)
    refused = s.plan("vm")
    assert actions(refused, CreateMigration) == []  # never re-sent blindly
    assert condition(refused, "RelocationFailed") == ("True", "MigrationRefused")
    assert condition(refused, "Relocating") == ("True", "RetryBackoff")
    rec = refused.status.relocation
    assert rec is not None
    assert rec.result is RelocationResult.FAILED
    assert rec.migration_name == mig.name
    assert "refused at admission by virt-api" in rec.message
    assert "in-flight migration detected" in rec.message
    assert refused.requeue_after is not None
    assert refused.requeue_after > 0
    s.apply_status("vm", refused).later(refused.requeue_after)
    (retry,) = actions(s.plan("vm"), CreateMigration)
    assert retry.name != mig.name  # the next attempt, under a new name


def test_a_refusal_of_an_older_attempt_is_ignored():
    s = revoked()
    first = s.plan("vm")
    s.apply_status("vm", first)
    svm = s.world.svms[(NS, "vm")]
    s.world.migration_refusals[(NS, "vm")] = (svm.uid, "some-other-name", IN_FLIGHT)
    plan = s.plan("vm")
    assert condition(plan, "Relocating") == ("True", "Migrating")
    assert plan.status.relocation is not None
    assert plan.status.relocation.result is RelocationResult.IN_PROGRESS


def test_a_migration_that_vanished_with_its_vmi_is_never_created_again():
    s = revoked()
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    assert first.status.relocation is not None
    assert first.status.relocation.vmi_uid == "vmi-vm-hw-1"
    s.apply_status("vm", first)
    s.migration(mig.name, "vm", "Running")
    # The VM restarts (its VMI deleted): virt-controller deletes the VMI's migrations, and
    # the new instance lands on hw-1 again.
    s.world.apply_migration((NS, mig.name), None)
    s.world.apply_vmi((NS, "vm"), None)
    s.vmi_for("vm", "hw-1", uid="vmi-vm-new")
    plan = s.plan("vm")
    names = [m.name for m in actions(plan, CreateMigration)]
    assert mig.name not in names
    assert plan.status.history is not None
    last = plan.status.history[-1]
    assert last.migration_name == mig.name
    assert last.result is RelocationResult.ABANDONED
    assert "was replaced" in last.message
    assert any(e.reason == "MigrationVanished" for e in plan.events)


INTEL = {
    "cpu-vendor.node.kubevirt.io/Intel": "true",
    "host-model-cpu.node.kubevirt.io/SapphireRapids": "true",
}
AMD = {
    "cpu-vendor.node.kubevirt.io/AMD": "true",
    "host-model-cpu.node.kubevirt.io/EPYC-Genoa": "true",
}


def mixed(*nodes: tuple[str, dict[str, str]], cpu_model: str = "host-model") -> Scenario:
    """VM-B (host-model) on hw-1 (Intel), whose trust was just revoked; `nodes` hyperwall."""
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    for name, cpu in (("hw-1", INTEL), *nodes):
        labels = {**node_labels("hyperwall", hostname=name), **cpu}
        s.world.apply_node(name, labels, True, s.now)
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", "hw-1", cpu_model=cpu_model)
    s.apply_status("vm", s.plan("vm"))
    s.world.apply_node("hw-1", {"kubernetes.io/hostname": "hw-1", **INTEL}, True, s.now)
    return s


def test_a_host_model_vm_is_not_migrated_to_a_node_of_another_cpu_only():
    plan = mixed(("amd-1", AMD)).plan("vm")
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Relocating") == ("False", "NoReachableCompliantNode")
    pending = next(c for c in plan.status.conditions or [] if c.type == "Pending")
    assert pending.reason == "NoReachableCompliantNode"
    assert "amd-1" in pending.message
    assert "SapphireRapids" in pending.message
    assert plan.starved  # woken when a node gains trust


def test_a_retry_is_steered_to_a_node_of_its_own_cpu_never_to_another_vendor():
    s = mixed(("amd-1", AMD), ("intel-2", INTEL), ("intel-3", INTEL))
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    assert mig.body["spec"] == {"vmiName": "vm"}  # KubeVirt's target pod selector restricts it
    s.apply_status("vm", first).later(1)
    s.migration(mig.name, "vm", "Failed", target="intel-2", failure="target pod crashed")
    s.apply_status("vm", s.plan("vm")).later(600)
    (retry,) = actions(s.plan("vm"), CreateMigration)
    # amd-1 sorts first and is compliant, but unreachable for this host-model VM.
    assert retry.body["spec"]["addedNodeSelector"] == {"kubernetes.io/hostname": "intel-3"}


def test_a_vm_with_a_named_cpu_model_may_go_to_any_compliant_node():
    plan = mixed(("amd-1", AMD), cpu_model="Skylake-Server").plan("vm")
    assert len(actions(plan, CreateMigration)) == 1


# ------------------------------------------------------------------ (c) RestartRequired, (e) queued


def test_restart_required_says_what_happens_meanwhile_and_what_will_be_done():
    from sod_operator.policy import rules

    from tests.unit.policy.test_rules import situation, world

    s = world(relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 600}})
    s.vm_for("vm", restart_required=True)
    d = rules.affinity_needs_restart(situation(s, affinity_propagated=False))
    assert d is not None
    assert d.reason == "RelocationRequiresRestart"
    assert "RestartRequired" in d.message
    assert "spec.relocation.restartAllowed" in d.message
    assert "keeps running on hw-1" in d.message
    assert "2026-01-01T12:10:00+00:00 (fail-closed deadline) it is stopped" in d.message


def test_a_migration_kubevirt_queues_as_pending_is_waited_for_never_failed_or_reissued():
    s = revoked()
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(600)  # queued for long: still no timeout of ours
    s.migration(mig.name, "vm", "Pending")
    plan = s.plan("vm")
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Relocating") == ("True", "Migrating")
    relocating = next(c for c in plan.status.conditions or [] if c.type == "Relocating")
    assert "Pending (queued by KubeVirt" in relocating.message
    assert condition(plan, "RelocationFailed") == ("False", "NoFailure")
    assert plan.status.relocation is not None
    assert plan.status.relocation.result is RelocationResult.IN_PROGRESS
