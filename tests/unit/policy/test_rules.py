"""Each relocation rule alone: a `Situation` in, a `Decision` (or None: not mine) out.

Covers every rule of `rules.RELOCATION` and `moving_target.MOVING_TARGET` (one per
`Relocating` reason of docs/OPERATOR.md), the chains' order, `first`, and steering.
Not covered here: how a decision lands in the plan and status, and the sequences across
visits (test_relocation.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sod_operator.api.v1alpha1.base import ConditionStatus
from sod_operator.api.v1alpha1.securevm import (
    RelocationRecord,
    RelocationResult,
    RelocationTrigger,
)
from sod_operator.policy import moving_target, rules
from sod_operator.policy.decision import Decision, Situation, first
from sod_operator.policy.observed import MigrationState
from sod_operator.policy.plan import (
    CreateMigration,
    PatchVM,
    RestartVMI,
    SlotKind,
    TimeToCompliance,
)

from tests.unit.policy.scenario import VM_B, Scenario

REVOKED = RelocationTrigger.TRUST_REVOKED
MTD = RelocationTrigger.MOVING_TARGET_DEFENSE
MTD_SPEC = {"movingTargetDefense": {"intervalSeconds": 600, "jitterSeconds": 60}}


def world(**extra: Any) -> Scenario:
    """VM-B running on hw-1, whose trust was revoked; hw-2 and hw-3 are compliant."""
    s = Scenario().profiles("hyperwall", "nohype")
    s.node("hw-1").node("hw-2", "hyperwall").node("hw-3", "hyperwall")
    s.securevm("vm", VM_B, **extra).vm_for("vm").vmi_for("vm", "hw-1")
    return s


def situation(s: Scenario, **kw: Any) -> Situation:
    base = Situation(
        obs=s.observe("vm"),
        cfg=s.settings,
        now=s.now,
        trigger=REVOKED,
        since=s.now,
        eligible=("hw-2", "hw-3"),
        migrating=False,
        affinity_propagated=True,
        record=None,
        relocation_count=0,
        slot_granted=True,
    )
    return replace(base, **kw)


def record(s: Scenario, **kw: Any) -> RelocationRecord:
    fields: dict[str, Any] = {"trigger": REVOKED, "from_node": "hw-1", "start_time": s.now}
    return RelocationRecord(**{**fields, "attempt": 1, **kw})


def says(d: Decision | None) -> tuple[str, str]:
    assert d is not None
    return (str(d.relocating), d.reason)


# ------------------------------------------------------------------ the chains


def test_relocation_chain_is_in_kubevirts_order():
    assert [r.__name__ for r in rules.RELOCATION] == [
        "fail_closed_stop",
        "resume_recorded_migration",
        "our_migration_running",
        "other_migration_running",
        "restart_in_progress",
        "settings_need_restart",
        "affinity_needs_restart",
        "affinity_not_propagated",
        "no_compliant_target",
        "not_live_migratable",
        "no_reachable_target",
        "retry_backoff",
        "waiting_for_slot",
        "migrate",
    ]


def test_first_takes_the_first_decision_and_a_chain_must_end_with_one():
    s = situation(world(), migrating=True)
    assert first(rules.RELOCATION, s).reason == "WaitingForOtherMigration"
    with pytest.raises(AssertionError, match="must end with one"):
        first([rules.no_compliant_target], s)


def test_every_rule_but_the_last_can_pass():
    s = situation(world())
    assert [r.__name__ for r in rules.RELOCATION if r(s) is not None] == ["migrate"]


# ------------------------------------------------------------------ fail-closed


def test_fail_closed_stop_halts_the_vm_past_the_deadline_only():
    s = world(relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 60}})
    assert rules.fail_closed_stop(situation(s, since=s.now - timedelta(seconds=59))) is None
    d = rules.fail_closed_stop(situation(s, since=s.now - timedelta(seconds=61)))
    assert says(d) == ("False", "FailClosedStopped")
    assert d is not None
    (patch,) = d.actions
    assert isinstance(patch, PatchVM)
    assert patch.patch["spec"]["runStrategy"] == "Halted"
    assert [(str(c[0]), c[2]) for c in d.conditions] == [("Ready", "FailClosedStopped")]


def test_fail_closed_alert_never_stops():
    s = world(relocation={"failClosed": {"action": "Alert", "deadlineSeconds": 60}})
    assert rules.fail_closed_stop(situation(s, since=s.now - timedelta(hours=1))) is None


def test_an_already_halted_vm_is_not_patched_again():
    s = world(relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 60}})
    s.vm_for("vm", run_strategy="Halted")
    d = rules.fail_closed_stop(situation(s, since=s.now - timedelta(seconds=61)))
    assert d is not None
    assert d.actions == ()


# ------------------------------------------------------------------ migrations in flight


def test_resume_recreates_the_recorded_migration_under_its_name():
    s = world()
    rec = record(s, migration_name="svm-vm-recorded", steered_to="hw-3")
    d = rules.resume_recorded_migration(situation(s, record=rec))
    assert says(d) == ("True", "Migrating")
    assert d is not None
    (create,) = d.actions
    assert isinstance(create, CreateMigration)
    assert (create.name, create.trigger, create.source_node, create.attempt) == (
        "svm-vm-recorded",
        REVOKED,
        "hw-1",
        1,
    )
    assert create.body["spec"]["addedNodeSelector"] == {"kubernetes.io/hostname": "hw-3"}


def test_resume_passes_once_the_migration_is_observed():
    s = world().migration("svm-vm-recorded", "vm", "Running")
    rec = record(s, migration_name="svm-vm-recorded")
    assert rules.resume_recorded_migration(situation(s, record=rec)) is None


def test_our_running_migration_is_waited_for():
    s = world().migration("svm-vm-ours", "vm", "Running")
    rec = record(s, migration_name="svm-vm-ours", attempt=2)
    d = rules.our_migration_running(situation(s, record=rec, migrating=True))
    assert says(d) == ("True", "Migrating")
    assert d is not None
    assert "attempt 2" in d.message
    assert rules.our_migration_running(situation(s, record=None, migrating=True)) is None


def test_someone_elses_migration_is_waited_for():
    s = world().migration("evacuation", "vm", "Running")
    assert says(rules.other_migration_running(situation(s, migrating=True))) == (
        "True",
        "WaitingForOtherMigration",
    )
    assert rules.other_migration_running(situation(s, migrating=False)) is None


def test_a_restart_under_way_is_waited_for():
    s = world()
    d = rules.restart_in_progress(situation(s, record=record(s)))
    assert says(d) == ("True", "Restarting")
    assert rules.restart_in_progress(situation(s, record=record(s, migration_name="m"))) is None


# ------------------------------------------------------------------ affinity


def test_restart_required_flags_or_restarts():
    s = world()
    s.vm_for("vm", restart_required=True)
    flagged = rules.affinity_needs_restart(situation(s, affinity_propagated=False))
    assert says(flagged) == ("False", "RelocationRequiresRestart")
    assert rules.affinity_needs_restart(situation(s, affinity_propagated=True)) is None


def test_the_affinity_must_reach_the_vmi_first():
    s = world()
    d = rules.affinity_not_propagated(situation(s, affinity_propagated=False))
    assert says(d) == ("True", "WaitingForAffinityPropagation")
    assert rules.affinity_not_propagated(situation(s)) is None


# ------------------------------------------------------------------ targets and migratability


def test_no_other_compliant_node_means_no_migration_and_starved():
    s = world()
    d = rules.no_compliant_target(situation(s, eligible=("hw-1",)))
    assert says(d) == ("False", "NoCompliantNode")
    assert d is not None
    assert d.starved
    assert d.actions == ()
    assert [(str(c[0]), str(c[1]), c[2]) for c in d.conditions] == [
        ("Pending", "True", "NoCompliantNode")
    ]
    assert rules.no_compliant_target(situation(s)) is None


def test_non_migratable_vm_is_flagged_without_restart_allowed():
    s = world()
    s.vmi_for("vm", "hw-1", live_migratable=False)
    assert says(rules.not_live_migratable(situation(s))) == ("False", "NotLiveMigratable")


def test_non_migratable_vm_is_restarted_when_allowed():
    s = world(relocation={"restartAllowed": True})
    s.vmi_for("vm", "hw-1", live_migratable=False)
    d = rules.not_live_migratable(situation(s, relocation_count=3))
    assert says(d) == ("True", "Restarting")
    assert d is not None
    assert [type(a) for a in d.actions] == [RestartVMI]
    assert d.record is not None
    assert (d.record.trigger, d.record.migration_name, d.relocation_count) == (REVOKED, "", 4)
    nowhere = rules.not_live_migratable(situation(s, eligible=("hw-1",)))
    assert says(nowhere) == ("False", "NoCompliantNode")
    assert nowhere is not None
    assert nowhere.starved


def test_a_migratable_vm_passes():
    s = world()
    assert rules.not_live_migratable(situation(s)) is None


# ------------------------------------------------------------------ retries, slots, migrating


def test_a_failed_attempt_backs_off_then_passes():
    s = world()
    failed = record(s, result=RelocationResult.FAILED, end_time=s.now - timedelta(seconds=4))
    d = rules.retry_backoff(situation(s, record=failed))
    assert says(d) == ("True", "RetryBackoff")
    assert d is not None
    assert d.requeue == pytest.approx(6.0)
    later = failed.model_copy(update={"end_time": s.now - timedelta(seconds=11)})
    assert rules.retry_backoff(situation(s, record=later)) is None


def test_without_a_slot_a_security_slot_is_requested():
    s = world()
    d = rules.waiting_for_slot(situation(s, slot_granted=False))
    assert says(d) == ("True", "WaitingForMigrationSlot")
    assert d is not None
    assert d.slot_request is not None
    assert (d.slot_request.kind, d.slot_request.source_node) == (SlotKind.SECURITY, "hw-1")
    assert d.slot_request.sensitivity > 0
    assert rules.waiting_for_slot(situation(s)) is None


def test_migrate_records_the_attempt_and_creates_its_migration():
    s = world()
    d = rules.migrate(situation(s, relocation_count=1))
    assert says(d) == ("True", "Migrating")
    assert d is not None
    (create,) = d.actions
    assert isinstance(create, CreateMigration)
    assert d.record is not None
    assert d.record.migration_name == create.name
    assert (create.trigger, create.source_node, create.attempt, d.relocation_count) == (
        REVOKED,
        "hw-1",
        1,
        2,
    )
    assert [e.reason for e in d.events] == ["MigrationCreated"]


def test_a_retry_keeps_the_trigger_and_count_and_steers_away_from_the_failed_target():
    s = world()
    failed = record(
        s,
        trigger=RelocationTrigger.PROFILE_CHANGED,
        result=RelocationResult.FAILED,
        avoid_nodes=["hw-2"],
    )
    d = rules.migrate(situation(s, record=failed, relocation_count=1))
    assert d is not None
    assert d.record is not None
    assert (d.record.trigger, d.record.attempt, d.relocation_count) == (
        RelocationTrigger.PROFILE_CHANGED,
        2,
        1,
    )
    assert d.record.steered_to == "hw-3"


def test_steer_leaves_the_choice_to_the_scheduler_unless_a_node_must_be_avoided():
    s = world()
    assert rules.steer(situation(s), []) == ""
    assert rules.steer(situation(s), ["hw-3"]) == "hw-2"
    assert rules.steer(situation(s), ["hw-2", "hw-3"]) == ""  # all failed: scheduler again
    s.later(1).node("hw-2")  # hw-2 lost a profile just now (then regained it): flapping
    s.node("hw-2", "hyperwall")
    assert rules.steer(situation(s), []) == "hw-3"


def test_steer_past_a_cooling_node_that_is_no_target_yet():
    """hw-2 lost its profile and is no target now; it may regain the label before KubeVirt
    schedules the target pod, and the scheduler must not be free to pick it then."""
    s = world()
    s.later(1).node("hw-2")
    assert rules.steer(situation(s), []) == "hw-3"
    s.later(301)  # the cool-down (300 s) is over: the scheduler picks again
    assert rules.steer(situation(s), []) == ""


def test_the_sources_own_revocation_does_not_steer():
    s = world()
    s.later(1).node("hw-1")  # the VM's node lost its profile: that is why it moves
    assert rules.steer(situation(s), []) == ""


# ------------------------------------------------------------------ compliant: moving target


def compliant(**extra: Any) -> Scenario:
    s = Scenario().profiles("hyperwall", "nohype")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall")
    s.securevm("vm", VM_B, **extra).vm_for("vm").vmi_for("vm", "hw-1")
    return s


def test_moving_target_chain_order():
    assert [r.__name__ for r in moving_target.MOVING_TARGET] == [
        "moving_target_off",
        "moving_target_not_due",
        "moving_target_blocked",
        "moving_target_no_target",
        "moving_target_no_slot",
        "moving_target_move",
    ]


def test_a_relocation_in_progress_on_a_compliant_node_is_reported():
    s = compliant()
    mtd = record(s, trigger=MTD, migration_name="svm-vm-mtd")
    d = moving_target.relocation_in_progress(situation(s, trigger=MTD, record=mtd))
    assert says(d) == ("True", "MovingTargetDefense")
    assert d is not None
    assert [a.name for a in d.actions if isinstance(a, CreateMigration)] == ["svm-vm-mtd"]
    security = record(s, migration_name="svm-vm-sec")
    s.migration("svm-vm-sec", "vm", "Running")
    d = moving_target.relocation_in_progress(situation(s, record=security, migrating=True))
    assert says(d) == ("True", "Migrating")
    assert d is not None
    assert d.actions == ()
    assert moving_target.relocation_in_progress(situation(s)) is None


def test_moving_target_off_is_idle():
    s = compliant()
    assert says(moving_target.moving_target_off(situation(s))) == ("False", "Idle")
    assert moving_target.moving_target_off(situation(compliant(**MTD_SPEC))) is None


def test_moving_target_not_due_waits_until_due():
    s = compliant(**MTD_SPEC)
    d = moving_target.moving_target_not_due(situation(s, next_move=s.now + timedelta(seconds=30)))
    assert says(d) == ("False", "Idle")
    assert d is not None
    assert d.requeue == 30
    assert moving_target.moving_target_not_due(situation(s, next_move=s.now)) is None


def test_moving_target_is_blocked_by_a_migration_or_a_non_migratable_vm():
    s = compliant(**MTD_SPEC)
    d = moving_target.moving_target_blocked(situation(s, migrating=True))
    assert d is not None
    assert d.requeue == s.settings.mtd_retry_seconds
    s.vmi_for("vm", "hw-1", live_migratable=False)
    assert moving_target.moving_target_blocked(situation(s)) is not None
    assert moving_target.moving_target_blocked(situation(compliant(**MTD_SPEC))) is None


def test_moving_target_without_another_node_looks_again_later():
    s = compliant(**MTD_SPEC)
    d = moving_target.moving_target_no_target(situation(s, eligible=("hw-1",)))
    assert d is not None
    assert (d.reason, d.requeue, d.actions) == ("Idle", s.settings.mtd_retry_seconds, ())
    assert moving_target.moving_target_no_target(situation(s)) is None


def test_moving_target_asks_for_its_own_kind_of_slot():
    s = compliant(**MTD_SPEC)
    d = moving_target.moving_target_no_slot(situation(s, slot_granted=False, next_move=s.now))
    assert d is not None
    assert d.slot_request is not None
    assert (d.slot_request.kind, d.slot_request.since) == (SlotKind.MOVING_TARGET, s.now)
    assert moving_target.moving_target_no_slot(situation(s, next_move=s.now)) is None


def test_moving_target_moves_and_schedules_the_next_move():
    s = compliant(**MTD_SPEC)
    d = moving_target.moving_target_move(situation(s, trigger=MTD, next_move=s.now))
    assert says(d) == ("True", "MovingTargetDefense")
    assert d is not None
    (create,) = d.actions
    assert isinstance(create, CreateMigration)
    assert create.trigger is MTD
    assert create.slot is SlotKind.MOVING_TARGET
    assert d.next_move is not None
    assert d.next_move > s.now


def test_decisions_are_plain_values():
    d = Decision(ConditionStatus.FALSE, "Idle", "x", signals=(TimeToCompliance(1.0),))
    assert d == Decision(ConditionStatus.FALSE, "Idle", "x", signals=(TimeToCompliance(1.0),))
    assert MigrationState().in_progress  # the decoders' defaults are what rules assume
