"""Deployment and relocation modes for ONE SecureVM: observed world + spec + now → a plan.

`reconcile` is the whole decision (paper, Sections III-D and III-E, on KubeVirt):

* the request: resolved, or reported (an unresolvable request never moves or stops a VM);
* deployment mode (`policy.deployment`): create (or adopt) the VirtualMachine with the
  affinity admitting exactly the nodes with a verified satisfying profile, merged with the
  tenant's own affinity; a VM without a running instance waits for a compliant node;
* relocation mode: the record is first brought up to date with what KubeVirt reports
  (`policy.records`); then, for a VM on a non-compliant node, the rule chain
  `policy.rules.RELOCATION` decides (one rule per `Relocating` reason), and for a compliant
  VM the chain `policy.moving_target.MOVING_TARGET`;
* fail-closed: past the deadline the VM is reported (`Alert`) or stopped (`Stop`).

The plan is a status to write FIRST (it records a migration's name before the migration
exists, so a restarted operator re-creates the same name and gets 409) and then actions. A
migration needs a slot from the fleet planner (`policy.fleet`): without one the plan carries
a `SlotRequest` instead of the migration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.v1alpha1.securevm import (
    FailClosedAction,
    RelocationResult,
    RelocationTrigger,
)
from sod_operator.policy.class_choice import (
    choose_vm_class,
    ensure_vm_settings,
    missing_settings,
)
from sod_operator.policy.decision import (
    Situation,
    fail_closed_deadline,
    first,
    overdue,
    restart_allowed,
)
from sod_operator.policy.deployment import ensure_vm, not_running
from sod_operator.policy.moving_target import MOVING_TARGET, next_move_time, relocation_in_progress
from sod_operator.policy.observed import vm_spec_affinity, vmi_template_spec
from sod_operator.policy.placement import (
    NO_CONSTRAINTS,
    LauncherConstraints,
    NodeView,
    desired_affinity,
    justifying_profile,
    tenant_affinity,
    tenant_terms,
)
from sod_operator.policy.plan import (
    Event,
    EventType,
    Json,
    Observation,
    PatchVM,
    Plan,
    TimeToCompliance,
    same_affinity,
)
from sod_operator.policy.planning import Planning
from sod_operator.policy.records import REFUSED, abandon_failed, finish_restart, track_migration
from sod_operator.policy.rules import RELOCATION
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.status import Conditions, find_condition

_TRIGGER_REASON = {
    RelocationTrigger.TRUST_REVOKED: Reason.TRUST_REVOKED,
    RelocationTrigger.TRUST_EXPIRED: Reason.TRUST_EXPIRED,
    RelocationTrigger.REQUEST_RAISED: Reason.REQUEST_RAISED,
    RelocationTrigger.PROFILE_CHANGED: Reason.PROFILE_CHANGED,
    RelocationTrigger.NODE_NOT_COMPLIANT: Reason.NODE_NOT_COMPLIANT,
}
_REASON_TRIGGER = {str(v): k for k, v in _TRIGGER_REASON.items()}


def reconcile(
    obs: Observation, cfg: RelocationSettings, now: datetime, *, slot_granted: bool = False
) -> Plan:
    """Plan one SecureVM. Pure: same inputs, same plan; `now` is the only clock."""
    # Verdicts expire with the clock, not with an event: the nodes are judged at `now`.
    obs = replace(obs, nodes=obs.nodes.at(now))
    svm = obs.svm
    # Shallow: the planner replaces status fields, never mutates the objects they hold.
    status = svm.status.model_copy()
    status.observed_generation = svm.generation
    status.vm_name = svm.vm_name
    plan = Plan(svm.key, status, uid=svm.uid)
    ctx = Planning(obs, cfg, now, plan, Conditions(), slot_granted)
    _decide(ctx)
    conditions, events = ctx.cond.merge(svm.status.conditions or [], svm.generation, now)
    status.conditions = conditions
    plan.events = events + plan.events
    plan.write_status = status != svm.status
    plan.starved = plan.starved or status.eligible_nodes == 0
    return plan


def _decide(ctx: Planning) -> None:
    if not _request(ctx):
        return  # Fail safe: an unresolvable request never moves or stops a running VM.
    if not choose_vm_class(ctx):
        return
    obs = ctx.obs
    desired, eligible = _placement(ctx)
    if not ensure_vm(ctx, desired, eligible):
        return
    ensure_vm_settings(ctx)
    vm, vmi = obs.vm, obs.vmi
    assert vm is not None
    migrating = any(not m.final for m in obs.migrations) or (vmi is not None and vmi.migrating)
    affinity_current = same_affinity(vm.template_affinity, desired)
    # Also during a migration: KubeVirt accepts the VM patch and only defers copying the
    # template to the VMI until the migration ends, so a tenant's edit made meanwhile is
    # reverted before it can take effect (issue 19; before, it waited for the migration).
    if not affinity_current:
        _patch_affinity(ctx, vm.name, desired)
    if vmi is None or not vmi.running:
        not_running(ctx, eligible, desired, affinity_current, migrating)
        return
    propagated = affinity_current and same_affinity(vmi.affinity, desired)
    _running(ctx, eligible, propagated, migrating)


def _request(ctx: Planning) -> bool:
    """The request's conditions and status fields; False when it cannot be resolved."""
    st, res, svm = ctx.status, ctx.obs.resolution, ctx.svm
    if svm.spec is None or res.error is not None:
        if svm.spec is None or res.error is None:
            reason, message = Reason.INVALID_REQUEST, svm.spec_error
        else:
            missing = res.error.missing_package
            reason = Reason.PACKAGE_NOT_FOUND if missing else Reason.INVALID_REQUEST
            message = str(res.error)
        st.request, st.satisfying_profiles, st.unmet, st.eligible_nodes = None, None, None, None
        ctx.cond.true(ConditionType.UNSATISFIABLE, reason, message)
        ctx.cond.false(ConditionType.READY, reason, message)
        return False
    st.request = res.resolved()
    st.satisfying_profiles = list(res.satisfying)
    st.unmet = res.gaps() or None
    if res.satisfying:
        by = ", ".join(res.satisfying)
        ctx.cond.false(
            ConditionType.UNSATISFIABLE, Reason.SATISFIABLE, f"satisfied by profile(s) {by}"
        )
    else:
        why = res.unsatisfiable_message()
        ctx.cond.true(ConditionType.UNSATISFIABLE, Reason.NO_SATISFYING_PROFILE, why)
    return True


def _placement(ctx: Planning) -> tuple[Json, list[str]]:
    """The VM's desired affinity and the nodes eligible for it (`status.eligibleNodes`)."""
    obs, spec = ctx.obs, ctx.svm.spec
    assert spec is not None
    # The tenant's own affinity: from the template we own, or from the adopted VM (minus ours).
    if spec.template is not None:
        source = vm_spec_affinity(spec.template)
    else:
        source = obs.vm.template_affinity if obs.vm else None
    satisfying = obs.resolution.satisfying
    desired = desired_affinity(tenant_affinity(source), satisfying, obs.catalog.values())
    eligible = obs.nodes.eligible(satisfying, tenant_terms(source), _launcher(ctx))
    ctx.status.eligible_nodes = len(eligible)
    return desired, eligible


def _launcher(ctx: Planning) -> LauncherConstraints:
    """The template's nodeSelector and tolerations (ours, or the adopted VM's)."""
    spec, vm = ctx.svm.spec, ctx.obs.vm
    assert spec is not None
    if spec.template is not None:
        return LauncherConstraints.from_vmi_spec(vmi_template_spec(spec.template))
    return vm.launcher if vm is not None else NO_CONSTRAINTS


def _patch_affinity(ctx: Planning, vm: str, desired: Json) -> None:
    profiles = ", ".join(ctx.obs.resolution.satisfying) or "none"
    event = Event(
        EventType.NORMAL,
        EventReason.AFFINITY_UPDATED,
        f"required node affinity now admits nodes with a verified profile among [{profiles}]",
    )
    ctx.act(PatchVM(vm, {"spec": {"template": {"spec": {"affinity": desired}}}}), event)


# -------------------------------------------------------------------------------- running


def _running(ctx: Planning, eligible: list[str], propagated: bool, migrating: bool) -> None:
    obs, st = ctx.obs, ctx.status
    vmi = obs.vmi
    assert vmi is not None
    assert vmi.node_name
    node = obs.nodes.view(vmi.node_name)
    profile = justifying_profile(node, obs.resolution.satisfying, obs.costs) if node else None
    if vmi.node_conflict:
        profile = None  # a disputed placement (status vs label vs launcher pods): never Compliant
    missing = missing_settings(obs, profile, vmi)
    if missing:
        profile = None  # the node protects only VMs launched to use it (issue 14)
    previous = (st.node_profile, st.node_name)
    st.node_name, st.node_profile = vmi.node_name, profile
    finish_restart(ctx)
    track_migration(ctx)
    _migratability(ctx)
    _failure(ctx)
    # What every rule reads; trigger, since and the record are set by `_situation`.
    base = Situation(
        obs=obs,
        cfg=ctx.cfg,
        now=ctx.now,
        trigger=RelocationTrigger.MOVING_TARGET_DEFENSE,
        since=ctx.now,
        eligible=eligible,
        migrating=migrating,
        affinity_propagated=propagated,
        record=None,
        relocation_count=0,
        slot_granted=ctx.slot_granted,
    )
    if profile is not None:
        _compliant(ctx, base, profile)
    else:
        _non_compliant(ctx, base, node, previous, missing)


def _situation(
    ctx: Planning,
    base: Situation,
    trigger: RelocationTrigger,
    since: datetime,
    next_move: datetime | None = None,
) -> Situation:
    """`base` with the record as it stands now (after the observations were folded in)."""
    st = ctx.status
    record, count = st.relocation, st.relocation_count or 0
    return replace(
        base,
        trigger=trigger,
        since=since,
        record=record,
        relocation_count=count,
        next_move=next_move,
    )


def _migratability(ctx: Planning) -> None:
    vmi, spec = ctx.obs.vmi, ctx.svm.spec
    assert vmi is not None
    assert spec is not None
    ctx.cond.false(
        ConditionType.NON_MIGRATABLE, Reason.LIVE_MIGRATABLE, "the VM can be live-migrated"
    )
    if vmi.live_migratable is not False:
        return
    detail = f" ({vmi.not_migratable_message})" if vmi.not_migratable_message else ""
    how = (
        "; relocation restarts it (spec.relocation.restartAllowed)"
        if restart_allowed(spec)
        else "; relocation needs spec.relocation.restartAllowed: true"
    )
    ctx.cond.true(
        ConditionType.NON_MIGRATABLE,
        Reason.NOT_LIVE_MIGRATABLE,
        f"KubeVirt: {vmi.not_migratable_reason or 'LiveMigratable=False'}{detail}{how}",
    )


def _failure(ctx: Planning) -> None:
    rec = ctx.status.relocation
    if rec is not None and rec.result is RelocationResult.FAILED:
        refused = rec.message.startswith(REFUSED)
        ctx.cond.true(
            ConditionType.RELOCATION_FAILED,
            Reason.MIGRATION_REFUSED if refused else Reason.MIGRATION_FAILED,
            f"attempt {rec.attempt} failed: {rec.message}",
        )
    else:
        ctx.cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")


def _compliant(ctx: Planning, base: Situation, profile: str) -> None:
    st, now, node = ctx.status, ctx.now, base.node
    if st.non_compliant_since is not None:
        ctx.plan.signals.append(TimeToCompliance((now - st.non_compliant_since).total_seconds()))
    st.non_compliant_since = None
    ctx.plan.protected_by = profile
    expiry = ctx.obs.nodes.expiry_of(node, profile)
    if expiry is not None:
        # Nothing else happens when a verdict lapses: wake at its expiry (no polling).
        ctx.plan.requeue(max(0.0, (expiry - now).total_seconds()))
    msg = f"runs on node {node}, whose verified profile {profile} satisfies the request"
    ctx.cond.true(ConditionType.COMPLIANT, Reason.COMPLIANT_NODE, msg)
    ctx.cond.true(ConditionType.READY, Reason.COMPLIANT_NODE, msg)
    ctx.cond.false(ConditionType.PENDING, Reason.PLACED, f"placed on {node}")
    abandon_failed(ctx)
    trigger = RelocationTrigger.MOVING_TARGET_DEFENSE
    decision = relocation_in_progress(_situation(ctx, base, trigger, now))
    if decision is None:
        _schedule_moving_target(ctx)
        situation = _situation(ctx, base, trigger, now, st.next_moving_target_time)
        decision = first(MOVING_TARGET, situation)
    ctx.apply(decision)


def _schedule_moving_target(ctx: Planning) -> None:
    """`status.nextMovingTargetTime`: none without moving target defense; else kept once set,
    first counted from the end of the last relocation (or now)."""
    st, mtd = ctx.status, ctx.svm.spec.moving_target_defense if ctx.svm.spec else None
    if mtd is None:
        st.next_moving_target_time = None
    elif st.next_moving_target_time is None:
        last = next((h.end_time for h in reversed(st.history or []) if h.end_time), None)
        seq = st.relocation_count or 0
        st.next_moving_target_time = next_move_time(last or ctx.now, mtd, ctx.svm.uid, seq)


def _non_compliant(
    ctx: Planning,
    base: Situation,
    node: NodeView | None,
    previous: tuple[str | None, str | None],
    missing: Sequence[str] = (),
) -> None:
    st, res = ctx.status, ctx.obs.resolution
    trigger = _trigger(ctx, node, previous)
    since = st.non_compliant_since or ctx.now
    st.non_compliant_since = since
    if node is not None:
        verified = ", ".join(sorted(node.verified))
        satisfied_by = ", ".join(res.satisfying) or "no profile"
        what = (
            f"node {node.name} has verified profile(s) [{verified}]; none satisfies the "
            f"request (satisfied by [{satisfied_by}])"
        )
        what += _expired(ctx, node)
    else:
        what = f"node {base.node} is gone"
    if missing and node is not None:
        what = (
            f"node {node.name}'s verified profile(s) protect only VMs launched with "
            f"{', '.join(missing)}, which the running instance lacks"
        )
    if base.vmi.node_conflict:
        what = f"where the VM runs is disputed: {base.vmi.node_conflict}"
    ctx.cond.false(ConditionType.COMPLIANT, _TRIGGER_REASON[trigger], what)
    ctx.cond.false(ConditionType.READY, _TRIGGER_REASON[trigger], what)
    ctx.cond.false(ConditionType.PENDING, Reason.PLACED, f"runs on {base.node}")
    situation = _situation(ctx, base, trigger, since)
    _fail_closed_deadline(ctx, situation)
    ctx.apply(first(RELOCATION, situation))


def _expired(ctx: Planning, node: NodeView) -> str:
    """Why a labelled profile does not count: its verdict expired and nobody renewed it."""
    if not node.expired:
        return ""
    when = ", ".join(
        f"{p} at {t.isoformat()}" if (t := ctx.obs.nodes.expiry_of(node.name, p)) else p
        for p in sorted(node.expired)
    )
    return (
        f"; the verdict(s) for {when} expired and no verifier renewed them: the label is still "
        "on the node but void (fail closed)"
    )


def _trigger(
    ctx: Planning, node: NodeView | None, previous: tuple[str | None, str | None]
) -> RelocationTrigger:
    """Why the VM must move: kept from the last visit, else told by what changed."""
    svm, vmi = ctx.svm, ctx.obs.vmi
    if vmi is not None and vmi.node_conflict:
        return RelocationTrigger.NODE_NOT_COMPLIANT
    prev = find_condition(svm.status, ConditionType.COMPLIANT)
    if ctx.status.non_compliant_since is not None and prev and prev.reason in _REASON_TRIGGER:
        return _REASON_TRIGGER[prev.reason]
    previous_profile, previous_node = previous
    if not previous_profile or node is None or previous_node != node.name:
        return RelocationTrigger.NODE_NOT_COMPLIANT
    if previous_profile in node.expired:
        return RelocationTrigger.TRUST_EXPIRED
    if previous_profile not in node.verified:
        return RelocationTrigger.TRUST_REVOKED
    if svm.status.observed_generation not in (None, svm.generation):
        return RelocationTrigger.REQUEST_RAISED
    return RelocationTrigger.PROFILE_CHANGED


def _fail_closed_deadline(ctx: Planning, s: Situation) -> None:
    """Before the deadline: look again when it passes. Past it with `Alert`: say so in Ready
    (the VM keeps running; the rule `fail_closed_stop` handles `Stop`)."""
    policy, deadline = fail_closed_deadline(s.spec, s.since)
    if ctx.now < deadline:
        ctx.plan.requeue((deadline - ctx.now).total_seconds())
    elif policy.action is not FailClosedAction.STOP:
        ctx.cond.false(
            ConditionType.READY,
            Reason.FAIL_CLOSED_ALERT,
            f"{overdue(policy, s.since)} (action Alert: the VM keeps running)",
        )
