"""Deployment and relocation modes of one SecureVM, Scenario style: world + spec + now → plan.

Covers: VM creation with owner reference and exact affinity, adoption via `vmRef`, the
relocation sequence (never during a migration → patch affinity → wait for the VMI → check a
target → record → migrate), request raised/lowered, Unsatisfiable and NoCompliantNode,
restart-safety of migration names, failed migrations retried elsewhere with back-off,
non-migratable VMs, fail-closed and moving target defense.
Not covered here: slot allocation across VMs (test_relocation_fleet.py), indexes
(test_relocation_world.py), anything that talks to an apiserver (tests/e2e).
"""

from __future__ import annotations

from dataclasses import replace

from sod_operator.api.constants import NO_COMPLIANT_NODE_LABEL, profile_label
from sod_operator.api.v1alpha1.securevm import RelocationResult, RelocationTrigger, SecureVMStatus
from sod_operator.policy.observed import MigrationState
from sod_operator.policy.plan import (
    CreateMigration,
    CreateVM,
    PatchVM,
    RestartVMI,
    SlotKind,
    migration_name,
)

from tests.unit.policy.scenario import NS, UID, VM_A, VM_B, Scenario, actions, condition


def deployed(security: dict = VM_B, node: str = "hw-1", **extra) -> Scenario:
    """VM-B (by default) running compliant on `node`, status converged."""
    s = Scenario().profiles("hyperwall", "nohype", "tpm", "sev-snp")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("nh-1", "nohype").node("plain-1")
    s.securevm("vm", security, **extra).vm_for("vm").vmi_for("vm", node)
    s.apply_status("vm", s.plan("vm"))
    return s


def revoke(s: Scenario, node: str, *keep: str) -> Scenario:
    s.node(node, *keep)
    return s


# ------------------------------------------------------------------ deployment mode


def test_new_securevm_creates_an_owned_vm_admitting_exactly_the_satisfying_profiles():
    s = Scenario().profiles("hyperwall", "nohype", "tpm").node("hw-1", "hyperwall")
    s.securevm("vm-b", VM_B)
    plan = s.plan("vm-b")
    (create,) = actions(plan, CreateVM)
    meta = create.body["metadata"]
    assert meta["ownerReferences"][0]["uid"] == UID
    assert meta["ownerReferences"][0]["controller"] is True
    terms = create.body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    # nohype protects from other VMs but not from the hypervisor: only hyperwall qualifies.
    assert [t["matchExpressions"][0]["key"] for t in terms] == [profile_label("hyperwall")]
    assert condition(plan, "Unsatisfiable") == ("False", "Satisfiable")
    assert condition(plan, "Pending") == ("True", "WaitingForScheduling")
    assert plan.status.satisfying_profiles == ["hyperwall"]
    assert plan.status.eligible_nodes == 1


def test_tenant_affinity_is_kept_and_never_loosened():
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    template = {"runStrategy": "Always", "template": {"spec": {"affinity": zone}}}
    s = Scenario().profiles("hyperwall").node("hw-1", "hyperwall")
    s.securevm("vm-b", VM_B, template=template)
    (create,) = actions(s.plan("vm-b"), CreateVM)
    (term,) = create.body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    keys = [e["key"] for e in term["matchExpressions"]]
    assert keys == ["zone", profile_label("hyperwall")]
    # ... and the tenant's zone restricts eligibility too: hw-1 has no zone label.
    assert s.plan("vm-b").status.eligible_nodes == 0


def test_cheapest_sufficient_class_is_preferred():
    s = Scenario().profiles("hyperwall", "nohype", "sev-snp").node("n", "nohype")
    s.securevm("vm-a", VM_A)
    (create,) = actions(s.plan("vm-a"), CreateVM)
    prefs = create.body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    avoided = {p["preference"]["matchExpressions"][0]["key"] for p in prefs}
    # nohype (cost 4) is the cheapest sufficient class: the premium classes are avoided.
    assert avoided == {profile_label("hyperwall"), profile_label("sev-snp")}


def test_compliant_vm_is_ready_and_nothing_is_done():
    s = deployed()
    plan = s.plan("vm")
    assert plan.actions == []
    assert condition(plan, "Ready") == ("True", "CompliantNode")
    assert condition(plan, "Compliant") == ("True", "CompliantNode")
    assert plan.status.node_name == "hw-1"
    assert plan.status.node_profile == "hyperwall"
    assert plan.status.observed_generation == 1


def test_unsatisfiable_request_says_per_profile_what_is_missing():
    s = Scenario().profiles("hyperwall", "tpm").node("hw-1", "hyperwall")
    s.securevm("vm", {"options": ["HardwareProtection"]})
    plan = s.plan("vm")
    status, reason = condition(plan, "Unsatisfiable")
    assert (status, reason) == ("True", "NoSatisfyingProfile")
    gaps = {g.profile: g for g in plan.status.unmet or []}
    assert set(gaps) == {"hyperwall", "tpm"}
    assert {(c.entity, c.property) for c in gaps["hyperwall"].cells or []} == {
        ("Hardware", "Confidentiality"),
        ("Hardware", "Integrity"),
    }
    assert gaps["tpm"].scope == "DataAndApp"  # does not cover FullVM either
    (create,) = actions(plan, CreateVM)
    terms = create.body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["key"] == NO_COMPLIANT_NODE_LABEL


def test_satisfiable_but_no_node_now_is_pending_no_compliant_node():
    s = Scenario().profiles("hyperwall").node("plain-1")
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", None)
    plan = s.plan("vm")
    assert condition(plan, "Pending") == ("True", "NoCompliantNode")
    assert condition(plan, "Ready") == ("False", "NoCompliantNode")
    assert plan.status.eligible_nodes == 0


def test_missing_package_is_reported_and_never_touches_a_running_vm():
    s = deployed()
    s.securevm("vm", {"package": "medical-records"})
    plan = s.plan("vm")
    assert condition(plan, "Unsatisfiable") == ("True", "PackageNotFound")
    assert plan.actions == []


def test_vm_name_taken_by_a_foreign_vm_is_a_conflict():
    s = Scenario().profiles("hyperwall").node("hw-1", "hyperwall").securevm("vm", VM_B)
    s.vm_for("vm")
    vm = s.world.vms[(NS, "vm")]
    s.world.apply_vm((NS, "vm"), replace(vm, owner_uids=frozenset()))
    plan = s.plan("vm")
    assert condition(plan, "Ready") == ("False", "VirtualMachineConflict")
    assert plan.actions == []


def test_vmref_adopts_the_vm_and_patches_only_its_affinity():
    s = Scenario().profiles("hyperwall").node("hw-1", "hyperwall")
    s.securevm("wrapper", VM_B, template=None, vmRef={"name": "legacy"})
    assert condition(s.plan("wrapper"), "Ready") == ("False", "VirtualMachineNotFound")
    from sod_operator.policy.observed import VMView

    s.world.apply_vm((NS, "legacy"), VMView(NS, "legacy", uid="legacy"))
    plan = s.plan("wrapper")
    patches = actions(plan, PatchVM)
    assert patches[0].patch == {"metadata": {"labels": {"sod.dev/securevm": "wrapper"}}}
    assert "affinity" in patches[1].patch["spec"]["template"]["spec"]
    assert actions(plan, CreateVM) == []


def test_unscheduled_instance_with_stale_affinity_is_recreated():
    s = Scenario().profiles("hyperwall").node("hw-1", "hyperwall")
    s.securevm("vm", VM_B).vm_for("vm").vmi_for("vm", None, affinity={"stale": True})
    (restart,) = actions(s.plan("vm"), RestartVMI)
    assert restart.uid == "vmi-vm-None"


# ------------------------------------------------------------------ relocation mode


def test_trust_revoked_creates_one_migration_recorded_in_status_first():
    s = revoke(deployed(), "hw-1")
    plan = s.plan("vm")
    (mig,) = actions(plan, CreateMigration)
    rec = plan.status.relocation
    assert rec is not None
    assert rec.migration_name == mig.name
    assert rec.trigger is RelocationTrigger.TRUST_REVOKED
    assert rec.from_node == "hw-1"
    assert rec.attempt == 1
    assert mig.body["spec"] == {"vmiName": "vm"}  # the scheduler picks among compliant nodes
    assert mig.body["metadata"]["labels"]["sod.dev/trigger"] == "TrustRevoked"
    assert condition(plan, "Compliant") == ("False", "TrustRevoked")
    assert condition(plan, "Relocating") == ("True", "Migrating")
    assert plan.status.relocation_count == 1


def test_without_a_slot_the_plan_asks_for_one_and_creates_nothing():
    s = revoke(deployed(), "hw-1")
    plan = s.plan("vm", slot=False)
    assert actions(plan, CreateMigration) == []
    assert plan.slot_request is not None
    assert plan.slot_request.kind is SlotKind.SECURITY
    assert plan.slot_request.source_node == "hw-1"
    assert condition(plan, "Relocating") == ("True", "WaitingForMigrationSlot")


def test_no_compliant_target_means_no_doomed_migration():
    s = revoke(deployed(), "hw-1").node("hw-2")  # the only other hyperwall node lost it too
    plan = s.plan("vm")
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Relocating") == ("False", "NoCompliantNode")
    assert condition(plan, "Pending") == ("True", "NoCompliantNode")


def test_migration_in_flight_blocks_everything():
    s = revoke(deployed(), "hw-1")
    s.migration("someone-elses", "vm", "Running")
    plan = s.plan("vm")
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Relocating") == ("True", "WaitingForOtherMigration")


def test_restarted_operator_recreates_the_recorded_name_and_never_a_second():
    s = revoke(deployed(), "hw-1")
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(2)
    # Crash after the status write, before the create: the same name again (409 if it exists).
    (again,) = actions(s.plan("vm"), CreateMigration)
    assert again.name == mig.name
    # Once the migration is observed, nothing more is created.
    s.migration(mig.name, "vm", "Scheduling", **{"sod.dev/securevm": "vm"})
    assert actions(s.plan("vm"), CreateMigration) == []


def test_successful_migration_closes_the_record_into_history():
    s = revoke(deployed(), "hw-1")
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(5)
    s.migration(mig.name, "vm", "Succeeded", target="hw-2").vmi_for("vm", "hw-2")
    plan = s.plan("vm")
    assert plan.status.relocation is None
    (done,) = plan.status.history or []
    assert (done.result, done.from_node, done.to_node) == (
        RelocationResult.SUCCEEDED,
        "hw-1",
        "hw-2",
    )
    assert condition(plan, "Ready") == ("True", "CompliantNode")
    assert {sig.name for sig in plan.signals} >= {"relocation_finished", "time_to_compliance"}


def test_failed_migration_backs_off_then_retries_elsewhere_under_a_new_name():
    s = revoke(deployed(), "hw-1").node("hw-3", "hyperwall")
    first = s.plan("vm")
    (mig1,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(3)
    s.migration(mig1.name, "vm", "Failed", target="hw-2", failure="target pod crashed")
    failed = s.plan("vm")
    assert condition(failed, "RelocationFailed") == ("True", "MigrationFailed")
    assert condition(failed, "Relocating") == ("True", "RetryBackoff")
    assert actions(failed, CreateMigration) == []
    assert failed.requeue_after is not None
    assert 0 < failed.requeue_after <= 10
    s.apply_status("vm", failed).later(10)
    retry = s.plan("vm")
    (mig2,) = actions(retry, CreateMigration)
    assert mig2.name != mig1.name
    assert retry.status.relocation is not None
    assert retry.status.relocation.attempt == 2
    # Steered away from the node the first attempt failed on.
    assert mig2.body["spec"]["addedNodeSelector"] == {"kubernetes.io/hostname": "hw-3"}


def test_request_raised_patches_affinity_waits_for_the_vmi_then_migrates():
    s = deployed(VM_A, node="nh-1")
    assert condition(s.plan("vm"), "Compliant") == ("True", "CompliantNode")
    s.securevm("vm", VM_B, generation=2, status=s.world.svms[(NS, "vm")].status)
    plan = s.plan("vm")
    (_patch,) = actions(plan, PatchVM)
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Compliant") == ("False", "RequestRaised")
    assert condition(plan, "Relocating") == ("True", "WaitingForAffinityPropagation")
    # KubeVirt copies the VM's new affinity to the VM, then to the VMI.
    s.apply_status("vm", plan).vm_for("vm").later(1)
    waiting = s.plan("vm")
    assert condition(waiting, "Relocating") == ("True", "WaitingForAffinityPropagation")
    s.vmi_for("vm", "nh-1")
    (mig,) = actions(s.plan("vm"), CreateMigration)
    assert mig.body["metadata"]["labels"]["sod.dev/trigger"] == "RequestRaised"


def test_lowering_a_request_never_migrates():
    s = deployed(VM_B, node="hw-1")
    s.securevm("vm", VM_A, generation=2, status=s.world.svms[(NS, "vm")].status)
    plan = s.plan("vm")
    assert actions(plan, CreateMigration) == []
    assert condition(plan, "Compliant") == ("True", "CompliantNode")
    (patch,) = actions(plan, PatchVM)  # the affinity admits more nodes now
    assert patch.patch["spec"]["template"]["spec"]["affinity"]


def test_profile_edit_that_drops_a_cell_is_a_profile_change():
    s = deployed()
    spec = s.world.profiles["hyperwall"]
    cells = dict(spec.cells)
    cells[("Hypervisor", "Integrity")] = "No"
    s.world.profiles["hyperwall"] = replace(spec, cells=cells)
    s.world._cache.clear()
    plan = s.plan("vm")
    assert condition(plan, "Compliant")[1] == "ProfileChanged"


def test_during_a_migration_affinity_is_patched_but_no_migration_is_created():
    s = deployed(VM_A, node="nh-1")
    s.securevm("vm", VM_B, generation=2, status=s.world.svms[(NS, "vm")].status)
    s.vmi_for("vm", "nh-1", migration=MigrationState(migration_uid="x"))
    plan = s.plan("vm")
    assert len(actions(plan, PatchVM)) == 1  # KubeVirt copies it to the VMI after the migration
    assert actions(plan, CreateMigration) == []


def test_a_tenants_affinity_edit_during_any_migration_is_reverted():
    s = deployed(VM_A, node="nh-1")
    desired = s.world.vms[(NS, "vm")].template_affinity
    s.vm_for("vm", affinity={"nodeAffinity": {}})  # the tenant dropped the required terms
    s.vmi_for("vm", "nh-1", affinity=desired, migration=MigrationState(migration_uid="theirs"))
    (patch,) = actions(s.plan("vm"), PatchVM)
    assert patch.patch["spec"]["template"]["spec"]["affinity"] == desired


def test_non_migratable_vm_is_flagged_unless_restart_is_allowed():
    s = deployed()
    s.vmi_for("vm", "hw-1", live_migratable=False, not_migratable_reason="SEVNotLiveMigratable")
    revoke(s, "hw-1")
    plan = s.plan("vm")
    assert condition(plan, "NonMigratable") == ("True", "NotLiveMigratable")
    assert "SEVNotLiveMigratable" in next(
        c.message for c in plan.status.conditions or [] if c.type == "NonMigratable"
    )
    assert condition(plan, "Relocating") == ("False", "NotLiveMigratable")
    assert plan.actions == []

    allowed = deployed(relocation={"restartAllowed": True})
    allowed.vmi_for(
        "vm", "hw-1", live_migratable=False, not_migratable_reason="SEVNotLiveMigratable"
    )
    revoke(allowed, "hw-1")
    plan = allowed.plan("vm")
    (_restart,) = actions(plan, RestartVMI)
    assert condition(plan, "Relocating") == ("True", "Restarting")
    assert plan.status.relocation is not None
    assert plan.status.relocation.migration_name == ""


def test_fail_closed_alert_reports_after_the_deadline():
    s = revoke(
        deployed(relocation={"failClosed": {"action": "Alert", "deadlineSeconds": 60}}), "hw-1"
    )
    s.node("hw-2")  # nowhere to go
    first = s.plan("vm")
    assert first.requeue_after == 60
    s.apply_status("vm", first).later(61)
    assert condition(s.plan("vm"), "Ready") == ("False", "FailClosedDeadlineExceeded")


def test_fail_closed_stop_halts_the_vm_and_restores_it_when_a_node_qualifies():
    s = deployed(relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 30}})
    revoke(s, "hw-1").node("hw-2")
    s.apply_status("vm", s.plan("vm")).later(31)
    plan = s.plan("vm")
    (stop,) = actions(plan, PatchVM)
    assert stop.patch["spec"]["runStrategy"] == "Halted"
    assert stop.patch["metadata"]["annotations"]["sod.dev/fail-closed-stopped"] == "Always"
    assert actions(plan, CreateMigration) == []
    # KubeVirt stops it; later a node gains trust.
    s.apply_status("vm", plan).vm_for(
        "vm", run_strategy="Halted", annotations={"sod.dev/fail-closed-stopped": "Always"}
    )
    s.world.apply_vmi((NS, "vm"), None)
    assert condition(s.plan("vm"), "Ready") == ("False", "FailClosedStopped")
    s.node("hw-2", "hyperwall")
    # The stopped VM also moves to the class that has a node now (hyperwall: no VM settings,
    # issue 14): its launchSecurity and affinity are patched before it is started again.
    patches = actions(s.plan("vm"), PatchVM)
    restore = patches[-1]
    assert restore.patch["spec"]["runStrategy"] == "Always"
    assert patches[0].patch["spec"]["template"]["spec"]["domain"]["launchSecurity"] is None


# ------------------------------------------------------------------ moving target defense


def test_moving_target_defense_moves_a_compliant_vm_within_its_interval():
    s = deployed(movingTargetDefense={"intervalSeconds": 600, "jitterSeconds": 60})
    due = s.world.svms[(NS, "vm")].status.next_moving_target_time
    assert due is not None
    assert 540 <= (due - s.now).total_seconds() <= 660
    early = s.plan("vm")
    assert early.slot_request is None
    assert early.requeue_after is not None
    s.later((due - s.now).total_seconds())
    asking = s.plan("vm", slot=False)
    assert asking.slot_request is not None
    assert asking.slot_request.kind is SlotKind.MOVING_TARGET
    plan = s.plan("vm")
    (mig,) = actions(plan, CreateMigration)
    assert mig.body["metadata"]["labels"]["sod.dev/trigger"] == "MovingTargetDefense"
    assert condition(plan, "Relocating") == ("True", "MovingTargetDefense")
    nxt = plan.status.next_moving_target_time
    assert nxt is not None
    assert nxt > s.now


def test_moving_target_defense_never_runs_without_another_compliant_node():
    s = deployed(movingTargetDefense={"intervalSeconds": 60})
    s.node("hw-2")
    s.later(61)
    plan = s.plan("vm")
    assert plan.slot_request is None
    assert actions(plan, CreateMigration) == []


# ------------------------------------------------------------------ names


def test_migration_names_are_bounded_deterministic_and_change_per_relocation():
    long = "v" * 80
    a = migration_name(long, UID, 1, 1, "TrustRevoked")
    assert len(a) <= 63
    assert a.startswith("svm-v")
    assert a == migration_name(long, UID, 1, 1, "TrustRevoked")
    assert a != migration_name(long, UID, 2, 1, "TrustRevoked")
    assert a != migration_name(long, UID, 1, 2, "TrustRevoked")
    assert a != migration_name(long, "other-uid", 1, 1, "TrustRevoked")


def test_status_survives_an_unrelated_reconcile_unchanged():
    s = deployed()
    once = s.plan("vm")
    s.apply_status("vm", once)
    twice = s.plan("vm")
    assert twice.status == once.status
    assert twice.events == []


def test_every_condition_is_set_on_first_visit():
    s = Scenario().profiles("hyperwall").securevm("vm", VM_B)
    types = [c.type for c in s.plan("vm").status.conditions or []]
    assert types == [
        "Ready",
        "Compliant",
        "Pending",
        "Unsatisfiable",
        "Relocating",
        "RelocationFailed",
        "NonMigratable",
    ]


def test_history_is_bounded():
    s = deployed()
    st = s.world.svms[(NS, "vm")].status
    from sod_operator.api.v1alpha1.securevm import RelocationRecord

    many = [
        RelocationRecord(
            trigger=RelocationTrigger.TRUST_REVOKED, start_time=s.now, result="Succeeded"
        )
        for _ in range(10)
    ]
    s.apply_status(
        "vm", replace(s.plan("vm"), status=SecureVMStatus(**{**st.__dict__, "history": many}))
    )
    revoke(s, "hw-1")
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).migration(mig.name, "vm", "Succeeded").vmi_for("vm", "hw-2")
    assert len(s.plan("vm").status.history or []) == s.settings.history_limit


def test_a_completed_relocation_restarts_the_moving_target_clock():
    s = deployed(movingTargetDefense={"intervalSeconds": 600})
    revoke(s, "hw-1").later(500)
    first = s.plan("vm")
    (mig,) = actions(first, CreateMigration)
    s.apply_status("vm", first).later(5)
    s.migration(mig.name, "vm", "Succeeded", target="hw-2").vmi_for("vm", "hw-2")
    plan = s.plan("vm")
    due = plan.status.next_moving_target_time
    assert due is not None
    assert (due - s.now).total_seconds() == 600  # not the old schedule, 100 s away
