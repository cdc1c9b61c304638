"""Relocation mode as an ordered chain of rules, one per `Relocating` reason (docs/OPERATOR.md).

`RELOCATION` decides for a VM running on a node that does not satisfy its request, in
KubeVirt's order (`../shared/notes/kubevirt.md` §1.7): fail-closed stop; resume a migration
recorded but not created; never during a migration; a restart under way; the affinity must
reach the running VMI first; a compliant target must exist; a non-migratable VM is restarted
or flagged; failed attempts back off; a slot from the fleet planner; then migrate.
`moving_target.MOVING_TARGET` is the chain for a compliant VM.

Each rule is `(Situation) -> Decision | None` (`policy.decision`) and is unit-tested alone
(tests/unit/policy/test_rules.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.v1alpha1.base import ConditionStatus
from sod_operator.api.v1alpha1.securevm import (
    FailClosedAction,
    RelocationRecord,
    RelocationResult,
    RelocationTrigger,
)
from sod_operator.policy.class_choice import desired_settings
from sod_operator.policy.decision import (
    Decision,
    Rule,
    Situation,
    fail_closed_deadline,
    not_relocating,
    overdue,
    relocating,
)
from sod_operator.policy.observed import STOPPED_ANNOTATION
from sod_operator.policy.placement import justifying_profile
from sod_operator.policy.plan import (
    HOSTNAME_LABEL,
    Event,
    EventType,
    PatchVM,
    RelocationStarted,
    RestartVMI,
    SlotKind,
    SlotRequest,
    migration_for,
    migration_name,
)
from sod_operator.policy.records import recorded_not_created
from sod_operator.policy.rules_kubevirt import no_reachable_target

# -------------------------------------------------------------------------------- the rules


def fail_closed_stop(s: Situation) -> Decision | None:
    """Past the fail-closed deadline with action `Stop`: halt the VM; nothing else moves."""
    policy, deadline = fail_closed_deadline(s.spec, s.since)
    if s.now < deadline or policy.action is not FailClosedAction.STOP:
        return None
    msg = f"{overdue(policy, s.since)}: the VM is stopped until a compliant node can run it"
    ready = (ConditionType.READY, ConditionStatus.FALSE, Reason.FAIL_CLOSED_STOPPED, msg)
    if s.vm.run_strategy == "Halted":
        return not_relocating(Reason.FAIL_CLOSED_STOPPED, msg, conditions=(ready,))
    halt = PatchVM(
        s.vm.name,
        {
            "metadata": {"annotations": {STOPPED_ANNOTATION: s.vm.run_strategy}},
            "spec": {"runStrategy": "Halted", "running": None},
        },
    )
    return not_relocating(
        Reason.FAIL_CLOSED_STOPPED,
        msg,
        conditions=(ready,),
        actions=(halt,),
        events=(Event(EventType.WARNING, EventReason.STOPPED, msg),),
    )


def resume_recorded_migration(s: Situation) -> Decision | None:
    """Recorded but not created (a crash between the two): create the recorded name again."""
    rec = s.record
    if not recorded_not_created(rec, s.migrating, s.obs.migrations):
        return None
    return relocating(
        Reason.MIGRATING,
        f"migration {rec.migration_name}",
        actions=(migration_for(s.obs.svm, s.vmi, rec),),
    )


def our_migration_running(s: Situation) -> Decision | None:
    """The migration this relocation created is in flight: wait for KubeVirt."""
    rec = s.record
    if not s.migrating or rec is None:
        return None
    mig = next((m for m in s.obs.migrations if m.name == rec.migration_name), None)
    if mig is None or mig.final:
        return None
    return relocating(
        Reason.MIGRATING,
        f"migration {rec.migration_name} (attempt {rec.attempt}) from {rec.from_node}"
        + _queued(mig.phase),
    )


def _queued(phase: str) -> str:
    """KubeVirt queues a migration beyond its parallel limits (per cluster, outbound per node)
    as Pending: it is waited for, neither failed nor issued again."""
    if phase in ("", "Pending"):
        return ": Pending (queued by KubeVirt within its parallel migration limits)"
    return f": {phase}"


def other_migration_running(s: Situation) -> Decision | None:
    """Never during a migration: KubeVirt refuses affinity updates and a second migration."""
    if not s.migrating:
        return None
    return relocating(
        Reason.WAITING_FOR_OTHER_MIGRATION,
        "a migration not created for this relocation is in progress; waiting for it",
    )


def restart_in_progress(s: Situation) -> Decision | None:
    """A relocation by restart is under way (it ends when the old instance is gone)."""
    rec = s.record
    if rec is None or rec.result is not RelocationResult.IN_PROGRESS or rec.migration_name:
        return None
    return relocating(Reason.RESTARTING, f"restarting off {rec.from_node}")


def settings_need_restart(s: Situation) -> Decision | None:
    """The instance lacks the VM settings its class needs (e.g. launchSecurity.snp): no
    migration can add them, only a new instance launched from the VM (issue 14)."""
    desired = desired_settings(s.obs)
    missing = desired.missing(s.vmi.vm_settings)
    if not missing:
        return None
    if s.vm.vm_settings != desired:
        return relocating(
            Reason.VM_SETTINGS_MISSING, f"rendering {desired.describe()} into the VM first"
        )
    why = f"the running instance lacks {', '.join(missing)}"
    return restart_or_flag(s, Reason.VM_SETTINGS_MISSING, why, same_node=True)


def affinity_needs_restart(s: Situation) -> Decision | None:
    """KubeVirt will never copy the new affinity to the running VMI (`RestartRequired`)."""
    if s.affinity_propagated or not s.vm.restart_required:
        return None
    return restart_or_flag(
        s,
        Reason.RELOCATION_REQUIRES_RESTART,
        "KubeVirt does not propagate the new affinity to the running instance (RestartRequired)",
    )


def affinity_not_propagated(s: Situation) -> Decision | None:
    """A migration must carry the new affinity: wait until KubeVirt copied it to the VMI."""
    if s.affinity_propagated:
        return None
    return relocating(
        Reason.WAITING_FOR_AFFINITY,
        "waiting until KubeVirt copied the new affinity to the running instance",
    )


def no_compliant_target(s: Situation) -> Decision | None:
    """No other eligible node: no migration (KubeVirt would fail it only after 5 minutes)."""
    if s.targets:
        return None
    satisfying = ", ".join(s.obs.resolution.satisfying) or "none"
    msg = (
        f"no other node has a verified profile among [{satisfying}]; no migration is created "
        "until one has"
    )
    pending = (ConditionType.PENDING, ConditionStatus.TRUE, Reason.NO_COMPLIANT_NODE, msg)
    return not_relocating(Reason.NO_COMPLIANT_NODE, msg, conditions=(pending,), starved=True)


def not_live_migratable(s: Situation) -> Decision | None:
    """KubeVirt cannot live-migrate the VMI (e.g. SEV): restart it if allowed, else flag it."""
    if s.vmi.live_migratable is not False:
        return None
    return restart_or_flag(s, Reason.NOT_LIVE_MIGRATABLE, "the VM cannot be live-migrated")


def retry_backoff(s: Situation) -> Decision | None:
    """After a failed attempt, wait `cfg.backoff(attempt)` before the next one."""
    rec = s.record
    if rec is None or rec.result is not RelocationResult.FAILED or rec.end_time is None:
        return None
    wait = s.cfg.backoff(rec.attempt) - (s.now - rec.end_time).total_seconds()
    if wait <= 0:
        return None
    return relocating(
        Reason.RETRY_BACKOFF,
        f"attempt {rec.attempt} failed; retrying in {wait:.0f} s",
        requeue=wait,
    )


def waiting_for_slot(s: Situation) -> Decision | None:
    """Ask the fleet planner for a slot within KubeVirt's limits; migrate once granted."""
    if s.slot_granted:
        return None
    request = s.obs.resolution.request
    sensitivity = request.sensitivity if request else 0
    return relocating(
        Reason.WAITING_FOR_MIGRATION_SLOT,
        "waiting for a migration slot (KubeVirt's per-cluster and per-node limits)",
        slot_request=SlotRequest(SlotKind.SECURITY, s.node, sensitivity, s.since),
    )


def migrate(s: Situation) -> Decision:
    """Everything holds: record the attempt, then create its migration."""
    return start_migration(s, s.trigger)


RELOCATION: Sequence[Rule] = (
    fail_closed_stop,
    resume_recorded_migration,
    our_migration_running,
    other_migration_running,
    restart_in_progress,
    settings_need_restart,
    affinity_needs_restart,
    affinity_not_propagated,
    no_compliant_target,
    not_live_migratable,
    no_reachable_target,
    retry_backoff,
    waiting_for_slot,
    migrate,
)


# -------------------------------------------------------------------------------- shared steps


def restart_or_flag(s: Situation, reason: str, why: str, *, same_node: bool = False) -> Decision:
    """Relocate by a restart where the SecureVM allows it (KubeVirt starts the VM again on a
    compliant node: its affinity admits only those), else say what would allow it."""
    if not s.restart_allowed:
        hint = "set spec.relocation.restartAllowed to relocate it by a restart"
        return not_relocating(reason, f"{why}; {hint}; {_meanwhile(s)}")
    if not (s.eligible if same_node else s.targets):
        return not_relocating(
            Reason.NO_COMPLIANT_NODE, "no compliant node to restart on", starved=True
        )
    record = RelocationRecord(trigger=s.trigger, from_node=s.node, attempt=1, start_time=s.now)
    event = Event(
        EventType.WARNING,
        EventReason.RESTARTED,
        f"{why}: restarting the VM so it starts on a compliant node (restartAllowed)",
    )
    return relocating(
        Reason.RESTARTING,
        f"restarting off {s.node}",
        actions=(RestartVMI(s.vmi.name, s.vmi.uid),),
        events=(event,),
        signals=(RelocationStarted(s.trigger),),
        record=record,
        relocation_count=s.relocation_count + 1,
    )


def _meanwhile(s: Situation) -> str:
    """What happens while the VM waits for a restart nobody allowed: it keeps running where
    it is until its fail-closed deadline, then the policy's action."""
    policy, deadline = fail_closed_deadline(s.spec, s.since)
    then = "stopped" if policy.action is FailClosedAction.STOP else "reported (Alert)"
    return (
        f"meanwhile it keeps running on {s.node}; at {deadline.isoformat()} (fail-closed "
        f"deadline) it is {then}; a restart by the tenant starts it on a compliant node"
    )


def start_migration(s: Situation, trigger: RelocationTrigger) -> Decision:
    """A new relocation, or the next attempt of a failed one (same trigger, same count)."""
    rec = s.record
    if rec is not None and rec.result is RelocationResult.FAILED:
        seq, attempt, trigger = s.relocation_count or 1, rec.attempt + 1, rec.trigger
        avoid = list(rec.avoid_nodes or [])
    else:
        seq, attempt, avoid = s.relocation_count + 1, 1, []
    name = migration_name(s.obs.svm.vm_name, s.obs.svm.uid, seq, attempt, str(trigger))
    steered = steer(s, avoid)
    record = RelocationRecord(
        trigger=trigger,
        from_node=s.node,
        migration_name=name,
        attempt=attempt,
        start_time=s.now,
        avoid_nodes=avoid or None,
        steered_to=steered,
        vmi_uid=s.vmi.uid,
    )
    created = (
        f"{trigger}: migration {name} (attempt {attempt}) off {s.node}; "
        f"{len(s.targets)} compliant target node(s)"
        + (f", steered to {steered}" if steered else "")
    )
    return relocating(
        Reason.MIGRATING,
        f"migration {name} (attempt {attempt}) from {s.node}",
        actions=(migration_for(s.obs.svm, s.vmi, record),),
        events=(Event(EventType.NORMAL, EventReason.MIGRATION_CREATED, created),),
        signals=(RelocationStarted(trigger),),
        record=record,
        relocation_count=seq,
    )


def steer(s: Situation, avoid: Sequence[str]) -> str:
    """The hostname to steer a migration to, or "" to let the scheduler pick.

    Steer to one pre-validated node only when some compliant nodes must be avoided (failed
    targets, or nodes that lost a profile within the cool-down: anti-flapping; the migration's
    source aside, a node in its cool-down is avoided even while it is no target), or when some
    node still carries a satisfying label whose verdict expired (void). Otherwise the
    scheduler picks among all compliant nodes (it knows capacity; the cost preferences
    already steer to the cheapest class).
    """
    targets, nodes = s.reachable_targets, s.obs.nodes
    cooldown = timedelta(seconds=s.cfg.node_cooldown_seconds)
    cooling = {n for n, t in nodes.revoked_at.items() if s.now - t < cooldown and n != s.node}
    shunned = set(avoid) | (cooling & set(targets))
    # Nodes whose verdict expired still carry the label the affinity matches: steer past them.
    void = nodes.void_nodes(s.obs.resolution.satisfying)
    # A cooling node that is no target now may regain its label before KubeVirt schedules the
    # target pod, and the scheduler could then pick it: steer while any node cools down.
    if not shunned & set(targets) and not void and not cooling:
        return ""
    preferred = [n for n in targets if n not in shunned] or [n for n in targets if n not in avoid]
    if not preferred:
        return ""  # every candidate failed before: let the scheduler try again
    costs, satisfying = s.obs.costs, s.obs.resolution.satisfying

    def rank(name: str) -> tuple[int, int, str]:
        profile = justifying_profile(nodes.nodes[name], satisfying, costs)
        return (costs.get(profile, 1) if profile else 0, nodes.load.get(name, 0), name)

    best = min(preferred, key=rank)
    return nodes.nodes[best].labels.get(HOSTNAME_LABEL, "")
