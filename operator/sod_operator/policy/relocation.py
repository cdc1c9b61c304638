"""Deployment and relocation modes for ONE SecureVM: observed world + spec + now → a plan.

`reconcile` is the whole decision (paper, Sections III-D and III-E, on KubeVirt):

* deployment mode: create (or adopt) the VirtualMachine with the affinity admitting exactly
  the nodes with a verified satisfying profile, merged with the tenant's own affinity;
* relocation mode: when the VMI's node stops satisfying the request (trust revoked, request
  raised, profile changed), in KubeVirt's order (`../shared/notes/kubevirt.md` §1.7): never
  during a migration; patch the VM's affinity; wait until KubeVirt copied it to the VMI; check
  that a compliant target exists (else `NoCompliantNode`, no doomed migration); record the
  attempt in status; create a VirtualMachineInstanceMigration with a deterministic name;
* non-migratable VMs are restarted only where the SecureVM allows it, else flagged;
* fail-closed: past the deadline the VM is reported (`Alert`) or stopped (`Stop`);
* moving target defense: a jittered periodic move, only while the VM is compliant.

The plan is a status to write FIRST (it records a migration's name before the migration
exists, so a restarted operator re-creates the same name and gets 409) and then actions. A
migration needs a slot from the fleet planner (`policy.fleet`): without one the plan carries
a `SlotRequest` instead of the migration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.constants import SECUREVM_LABEL
from sod_operator.api.v1alpha1.securevm import (
    FailClosedAction,
    FailClosedPolicy,
    RelocationRecord,
    RelocationResult,
    RelocationTrigger,
    SecureVMSpec,
    SecureVMStatus,
)
from sod_operator.policy.moving_target import next_move_time
from sod_operator.policy.observed import (
    STOPPED_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    MigrationView,
    VMView,
)
from sod_operator.policy.placement import LauncherConstraints, desired_affinity, tenant_affinity
from sod_operator.policy.plan import (
    CreateMigration,
    CreateVM,
    Event,
    EventType,
    Json,
    Observation,
    PatchVM,
    Plan,
    ReplaceVMSpec,
    RestartVMI,
    SecureVMView,
    Signal,
    SlotKind,
    SlotRequest,
    migration_body,
    migration_name,
    same_affinity,
    template_hash,
    vm_body,
    with_affinity,
)
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.status import Conditions, find_condition

HOSTNAME_LABEL = "kubernetes.io/hostname"
DEFAULT_FAIL_CLOSED = FailClosedPolicy()
SECURITY_TRIGGERS = frozenset(RelocationTrigger) - {RelocationTrigger.MOVING_TARGET_DEFENSE}


_TRIGGER_REASON = {
    RelocationTrigger.TRUST_REVOKED: Reason.TRUST_REVOKED,
    RelocationTrigger.REQUEST_RAISED: Reason.REQUEST_RAISED,
    RelocationTrigger.PROFILE_CHANGED: Reason.PROFILE_CHANGED,
    RelocationTrigger.NODE_NOT_COMPLIANT: Reason.NODE_NOT_COMPLIANT,
}
_REASON_TRIGGER = {str(v): k for k, v in _TRIGGER_REASON.items()}


# --------------------------------------------------------------------------------------------
# The decision


@dataclass
class _Ctx:
    obs: Observation
    cfg: RelocationSettings
    now: datetime
    plan: Plan
    cond: Conditions
    status: SecureVMStatus

    @property
    def svm(self) -> SecureVMView:
        return self.obs.svm


def reconcile(
    obs: Observation, cfg: RelocationSettings, now: datetime, *, slot_granted: bool = False
) -> Plan:
    """Plan one SecureVM. Pure: same inputs, same plan; `now` is the only clock."""
    svm = obs.svm
    # Shallow: the planner replaces status fields, never mutates the objects they hold.
    status = svm.status.model_copy()
    status.observed_generation = svm.generation
    status.vm_name = svm.vm_name
    ctx = _Ctx(obs, cfg, now, Plan(svm.key, status), Conditions(), status)
    _decide(ctx, slot_granted)
    conditions, events = ctx.cond.merge(svm.status.conditions or [], svm.generation, now)
    status.conditions = conditions
    ctx.plan.events = events + ctx.plan.events
    return ctx.plan


def _decide(ctx: _Ctx, slot_granted: bool) -> None:
    obs, cond, st = ctx.obs, ctx.cond, ctx.status
    svm, res = obs.svm, obs.resolution
    spec = svm.spec
    if spec is None or res.error is not None:
        if spec is None:
            reason, message = Reason.INVALID_REQUEST, svm.spec_error
        else:
            assert res.error is not None
            reason = (
                Reason.PACKAGE_NOT_FOUND if res.error.missing_package else Reason.INVALID_REQUEST
            )
            message = str(res.error)
        st.request, st.satisfying_profiles, st.unmet, st.eligible_nodes = None, None, None, None
        cond.true(ConditionType.UNSATISFIABLE, reason, message)
        cond.false(ConditionType.READY, reason, message)
        # Fail safe: an unresolvable request never moves or stops a running VM.
        return

    st.request = res.resolved()
    st.satisfying_profiles = list(res.satisfying)
    st.unmet = res.gaps() or None
    if res.satisfying:
        cond.false(
            ConditionType.UNSATISFIABLE,
            Reason.SATISFIABLE,
            f"satisfied by profile(s) {', '.join(res.satisfying)}",
        )
    else:
        cond.true(
            ConditionType.UNSATISFIABLE, Reason.NO_SATISFYING_PROFILE, res.unsatisfiable_message()
        )

    # The tenant's own affinity: from the template we own, or from the adopted VM (minus ours).
    vm = obs.vm
    if spec.template is not None:
        source = (spec.template.get("template") or {}).get("spec", {}).get("affinity")
    else:
        source = vm.template_affinity if vm else None
    tenant = tenant_affinity(source)
    desired = desired_affinity(tenant, res.satisfying, obs.catalog.values())
    tenant_terms = (
        tenant.get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    eligible = obs.nodes.eligible(res.satisfying, tenant_terms, _launcher(spec, vm))
    st.eligible_nodes = len(eligible)

    if not _ensure_vm(ctx, desired, eligible):
        return
    assert vm is not None
    vmi = obs.vmi
    in_flight = [m for m in obs.migrations if not m.final]
    migrating = bool(in_flight) or (vmi is not None and vmi.migrating)

    affinity_current = same_affinity(vm.template_affinity, desired)
    # Also during a migration: KubeVirt accepts the VM patch and only defers copying the
    # template to the VMI until the migration ends, so a tenant's edit made meanwhile is
    # reverted before it can take effect (issue 19; before, it waited for the migration).
    if not affinity_current:
        ctx.plan.actions.append(
            PatchVM(vm.name, {"spec": {"template": {"spec": {"affinity": desired}}}})
        )
        ctx.plan.events.append(
            Event(
                EventType.NORMAL,
                EventReason.AFFINITY_UPDATED,
                "required node affinity now admits nodes with a verified profile among "
                f"[{', '.join(res.satisfying) or 'none'}]",
            )
        )

    if vmi is None or not vmi.running:
        _not_running(ctx, eligible, desired, affinity_current, migrating)
        return

    _running(ctx, eligible, desired, affinity_current, migrating, slot_granted)


def _launcher(spec: SecureVMSpec, vm: VMView | None) -> LauncherConstraints:
    """The template's nodeSelector and tolerations (ours, or the adopted VM's)."""
    if spec.template is not None:
        vmi_spec = (spec.template.get("template") or {}).get("spec")
        return LauncherConstraints.from_vmi_spec(vmi_spec)
    return vm.launcher if vm is not None else LauncherConstraints()


def _ensure_vm(ctx: _Ctx, desired: Json, eligible: list[str]) -> bool:
    """Create or adopt the VM; False when there is nothing (more) to decide this time."""
    obs, cond, svm = ctx.obs, ctx.cond, ctx.svm
    spec = svm.spec
    assert spec is not None
    vm = obs.vm
    if obs.vm_owner is not None:
        _conflict(ctx, f"VirtualMachine {svm.vm_name} is managed by SecureVM {obs.vm_owner}")
        return False
    if spec.template is not None:
        if vm is None and obs.vm_rejected:
            cond.false(
                ConditionType.READY,
                Reason.VM_REJECTED,
                f"the VirtualMachine made from spec.template was refused: {obs.vm_rejected}; "
                "fix spec.template (a KubeVirt VirtualMachineSpec)",
            )
            _unknown_placement(ctx, Reason.VM_REJECTED, "no VirtualMachine")
            return False
        if vm is None:
            ctx.plan.actions.append(CreateVM(vm_body(svm, spec.template, desired)))
            ctx.plan.events.append(
                Event(
                    EventType.NORMAL,
                    EventReason.VM_CREATED,
                    f"created VirtualMachine {svm.vm_name}",
                )
            )
            _waiting(ctx, eligible, "VirtualMachine created")
            return False
        if svm.uid not in vm.owner_uids:
            msg = (
                f"VirtualMachine {vm.name} exists and is not owned by this SecureVM: rename the "
                "SecureVM, or adopt the VM with `spec.vmRef`"
            )
            _conflict(ctx, msg)
            return False
        if vm.template_hash != template_hash(spec.template):
            # The tenant edited the template: re-apply it (KubeVirt decides what needs a restart).
            ctx.plan.actions.append(
                ReplaceVMSpec(
                    vm.name,
                    with_affinity(spec.template, desired),
                    {TEMPLATE_HASH_ANNOTATION: template_hash(spec.template)},
                )
            )
            ctx.plan.events.append(
                Event(EventType.NORMAL, EventReason.VM_UPDATED, "applied the changed spec.template")
            )
        return True
    if vm is None:
        cond.false(
            ConditionType.READY,
            Reason.VM_NOT_FOUND,
            f"VirtualMachine {svm.vm_name} (spec.vmRef) not found in namespace {svm.namespace}",
        )
        _unknown_placement(ctx, Reason.VM_NOT_FOUND, "no VirtualMachine")
        return False
    owner = vm.securevm
    if owner is not None and owner != svm.name:
        _conflict(ctx, f"VirtualMachine {vm.name} is already managed by SecureVM {owner}")
        return False
    if owner is None:
        ctx.plan.actions.append(
            PatchVM(vm.name, {"metadata": {"labels": {SECUREVM_LABEL: svm.name}}})
        )
        ctx.plan.events.append(
            Event(EventType.NORMAL, EventReason.VM_ADOPTED, f"adopted VirtualMachine {vm.name}")
        )
    return True


def _conflict(ctx: _Ctx, message: str) -> None:
    """Another SecureVM manages the VM: say so, and claim nothing about where it runs (no
    stale NODE/PROFILE columns, Compliant Unknown)."""
    ctx.cond.false(ConditionType.READY, Reason.VM_CONFLICT, message)
    _unknown_placement(ctx, Reason.VM_CONFLICT, message)
    ctx.status.non_compliant_since = None


def _unknown_placement(ctx: _Ctx, reason: str, message: str) -> None:
    for ctype in (ConditionType.COMPLIANT, ConditionType.NON_MIGRATABLE):
        ctx.cond.unknown(ctype, reason, message)
    ctx.cond.false(ConditionType.RELOCATING, Reason.IDLE, "no relocation in progress")
    ctx.cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")
    ctx.status.node_name = None
    ctx.status.node_profile = None


def _unplaced(ctx: _Ctx, reason: str, message: str) -> None:
    _unknown_placement(ctx, Reason.NOT_RUNNING, "the VM has no running instance")
    pending_reason = reason if reason != Reason.NOT_RUNNING else Reason.WAITING_FOR_SCHEDULING
    ctx.cond.true(ConditionType.PENDING, pending_reason, message)
    ctx.cond.false(ConditionType.READY, reason, message)


def _not_running(
    ctx: _Ctx, eligible: list[str], desired: Json, affinity_current: bool, migrating: bool
) -> None:
    obs, cond, st = ctx.obs, ctx.cond, ctx.status
    vm, vmi = obs.vm, obs.vmi
    assert vm is not None
    st.non_compliant_since = None
    _finish_restart(ctx)
    if vm.stopped_by_fail_closed is not None:
        if eligible:
            ctx.plan.actions.append(
                PatchVM(
                    vm.name,
                    {
                        "metadata": {"annotations": {STOPPED_ANNOTATION: None}},
                        "spec": {"runStrategy": vm.stopped_by_fail_closed, "running": None},
                    },
                )
            )
            ctx.plan.events.append(
                Event(
                    EventType.NORMAL,
                    EventReason.RESTORED,
                    f"{len(eligible)} compliant node(s) available again: restarting the VM "
                    f"(runStrategy {vm.stopped_by_fail_closed})",
                )
            )
            _unplaced(ctx, Reason.WAITING_FOR_SCHEDULING, "restarting after a fail-closed stop")
        else:
            _unplaced(
                ctx,
                Reason.FAIL_CLOSED_STOPPED,
                "stopped by the fail-closed policy; it starts again when a compliant node exists",
            )
        return
    if vmi is None:
        if vm.run_strategy == "Halted":
            _unknown_placement(ctx, Reason.NOT_RUNNING, "the VM is stopped (runStrategy Halted)")
            cond.false(ConditionType.PENDING, Reason.NOT_RUNNING, "the VM is stopped")
            cond.false(ConditionType.READY, Reason.NOT_RUNNING, "the VM is stopped")
            return
        _waiting(ctx, eligible, "waiting for KubeVirt to start the VM's instance")
        return
    # A VMI not yet on a node keeps the pod it was created with: if its affinity is stale
    # (e.g. the request became satisfiable), only a new instance picks the VM's new affinity.
    if (
        vmi.node_name is None
        and affinity_current
        and not migrating
        and not same_affinity(vmi.affinity, desired)
    ):
        ctx.plan.actions.append(RestartVMI(vmi.name, vmi.uid))
        ctx.plan.events.append(
            Event(
                EventType.NORMAL,
                EventReason.RESTARTED_PENDING,
                "the unscheduled instance had a stale affinity: recreated with the current one",
            )
        )
    _waiting(ctx, eligible, "waiting for the instance to be scheduled")


def _waiting(ctx: _Ctx, eligible: list[str], what: str) -> None:
    satisfying = ctx.obs.resolution.satisfying
    if not satisfying:
        _unplaced(ctx, Reason.NO_SATISFYING_PROFILE, f"{what}; no profile satisfies the request")
    elif not eligible:
        _unplaced(
            ctx,
            Reason.NO_COMPLIANT_NODE,
            f"{what}; no node has a verified profile among [{', '.join(satisfying)}]: "
            "the VM is placed as soon as one has",
        )
    else:
        _unplaced(
            ctx,
            Reason.WAITING_FOR_SCHEDULING,
            f"{what}; {len(eligible)} compliant node(s), waiting for the scheduler",
        )


def _finish_restart(ctx: _Ctx) -> None:
    """A restart relocation ends when the old instance is gone."""
    rec = ctx.status.relocation
    vmi = ctx.obs.vmi
    if rec is None or rec.migration_name or rec.result is not RelocationResult.IN_PROGRESS:
        return
    if vmi is not None and vmi.running and vmi.node_name == rec.from_node:
        return
    if vmi is not None and vmi.running:
        _close(
            ctx,
            rec,
            RelocationResult.SUCCEEDED,
            vmi.node_name or "",
            "restarted on a compliant node",
        )


def _close(
    ctx: _Ctx, rec: RelocationRecord, result: RelocationResult, to_node: str, message: str
) -> RelocationRecord:
    done = rec.model_copy(
        update={"result": result, "to_node": to_node, "end_time": ctx.now, "message": message}
    )
    history = [*(ctx.status.history or []), done]
    ctx.status.history = history[-ctx.cfg.history_limit :]
    ctx.status.relocation = done if result is RelocationResult.FAILED else None
    if result is RelocationResult.SUCCEEDED:
        # The VM just moved: the next moving-target move counts from here.
        ctx.status.next_moving_target_time = None
    ctx.plan.signals.append(
        Signal(
            "relocation_finished",
            {"trigger": str(rec.trigger), "result": str(result)},
            (ctx.now - rec.start_time).total_seconds(),
        )
    )
    return done


def _track_migration(ctx: _Ctx) -> None:
    """Fold the observed state of our recorded migration into the record."""
    obs, st = ctx.obs, ctx.status
    rec, vmi = st.relocation, obs.vmi
    if rec is None or not rec.migration_name or rec.result is not RelocationResult.IN_PROGRESS:
        return
    assert vmi is not None
    mig = next((m for m in obs.migrations if m.name == rec.migration_name), None)
    # The VMI reports the outcome of its migration (matched by uid) as soon as the VMIM does.
    state = (
        vmi.migration if vmi.migration and mig and vmi.migration.migration_uid == mig.uid else None
    )
    succeeded = mig is not None and (
        mig.succeeded or bool(state and state.completed and not state.failed)
    )
    failed = (
        mig is not None
        and not succeeded
        and (mig.phase == "Failed" or bool(state and state.failed))
    )
    if mig is not None and (succeeded or failed):
        if succeeded:
            _close(
                ctx, rec, RelocationResult.SUCCEEDED, vmi.node_name or mig.target_node, "migrated"
            )
            ctx.plan.events.append(
                Event(
                    EventType.NORMAL,
                    EventReason.MIGRATION_SUCCEEDED,
                    f"migration {mig.name} moved the VM from {rec.from_node} to {vmi.node_name}",
                )
            )
        else:
            target = mig.target_node or (
                vmi.migration.target_node
                if vmi.migration and vmi.migration.migration_uid == mig.uid
                else ""
            )
            reason = (
                mig.failure_reason
                or (vmi.migration.failure_reason if vmi.migration else "")
                or "KubeVirt reported phase Failed"
            )
            avoid = list(rec.avoid_nodes or [])
            if target and target not in avoid:
                avoid.append(target)
            attempt = rec.model_copy(update={"avoid_nodes": avoid[-16:] or None})
            _close(ctx, attempt, RelocationResult.FAILED, target, reason)
            ctx.plan.events.append(
                Event(
                    EventType.WARNING,
                    EventReason.MIGRATION_FAILED,
                    f"migration {mig.name} (attempt {rec.attempt}) failed"
                    + (f" on target {target}" if target else "")
                    + f": {reason}",
                )
            )
        return
    if mig is None and not (vmi.migrating) and vmi.node_name != rec.from_node:
        # The migration finished and was garbage-collected before we saw its final phase.
        _close(ctx, rec, RelocationResult.SUCCEEDED, vmi.node_name or "", "migrated")


def _running(
    ctx: _Ctx,
    eligible: list[str],
    desired: Json,
    affinity_current: bool,
    migrating: bool,
    slot_granted: bool,
) -> None:
    obs, cond, st, now = ctx.obs, ctx.cond, ctx.status, ctx.now
    svm, res, vmi = obs.svm, obs.resolution, obs.vmi
    spec = svm.spec
    assert vmi is not None
    assert vmi.node_name
    assert spec is not None
    node_name = vmi.node_name
    node = obs.nodes.nodes.get(node_name)
    costs = {name: p.cost for name, p in obs.catalog.items()}
    on_node = sorted(
        (p for p in res.satisfying if node is not None and p in node.verified),
        key=lambda p: (costs.get(p, 1), p),
    )
    # A disputed placement (status vs KubeVirt's label vs launcher pods) is never Compliant.
    profile = on_node[0] if on_node and not vmi.node_conflict else None
    previous_profile, previous_node = st.node_profile, st.node_name
    st.node_name, st.node_profile = node_name, profile
    _finish_restart(ctx)
    _track_migration(ctx)
    cond.false(ConditionType.NON_MIGRATABLE, Reason.LIVE_MIGRATABLE, "the VM can be live-migrated")
    if vmi.live_migratable is False:
        cond.true(
            ConditionType.NON_MIGRATABLE,
            Reason.NOT_LIVE_MIGRATABLE,
            f"KubeVirt: {vmi.not_migratable_reason or 'LiveMigratable=False'}"
            + (f" ({vmi.not_migratable_message})" if vmi.not_migratable_message else "")
            + (
                "; relocation restarts it (spec.relocation.restartAllowed)"
                if _restart_allowed(spec)
                else "; relocation needs spec.relocation.restartAllowed: true"
            ),
        )
    rec = st.relocation
    if rec is not None and rec.result is RelocationResult.FAILED:
        cond.true(
            ConditionType.RELOCATION_FAILED,
            Reason.MIGRATION_FAILED,
            f"attempt {rec.attempt} failed: {rec.message}",
        )
    else:
        cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")

    if profile is not None:
        _compliant(ctx, eligible, profile, migrating, slot_granted)
        return

    # ---- relocation mode
    prev = find_condition(svm.status, ConditionType.COMPLIANT)
    if vmi.node_conflict:
        trigger = RelocationTrigger.NODE_NOT_COMPLIANT
    elif st.non_compliant_since is not None and prev is not None and prev.reason in _REASON_TRIGGER:
        trigger = _REASON_TRIGGER[prev.reason]
    elif previous_profile and previous_node == node_name and node is not None:
        if previous_profile not in node.verified:
            trigger = RelocationTrigger.TRUST_REVOKED
        elif svm.status.observed_generation not in (None, svm.generation):
            trigger = RelocationTrigger.REQUEST_RAISED
        else:
            trigger = RelocationTrigger.PROFILE_CHANGED
    else:
        trigger = RelocationTrigger.NODE_NOT_COMPLIANT
    since = st.non_compliant_since or now
    st.non_compliant_since = since
    verified = sorted(node.verified) if node is not None else []
    what = (
        f"node {node_name} has verified profile(s) [{', '.join(verified)}]; none satisfies the "
        f"request (satisfied by [{', '.join(res.satisfying) or 'no profile'}])"
        if node is not None
        else f"node {node_name} is gone"
    )
    if vmi.node_conflict:
        what = f"where the VM runs is disputed: {vmi.node_conflict}"
    cond.false(ConditionType.COMPLIANT, _TRIGGER_REASON[trigger], what)
    cond.false(ConditionType.READY, _TRIGGER_REASON[trigger], what)
    cond.false(ConditionType.PENDING, Reason.PLACED, f"runs on {node_name}")
    if _fail_closed(ctx, spec, since):
        return

    if _recorded_not_created(rec, migrating, obs.migrations):
        # Recorded but not observed: we crashed (or were restarted) between the record and the
        # create. Creating the same name again is idempotent (409 AlreadyExists = done).
        assert rec is not None
        ctx.plan.actions.append(_create_for(ctx, rec))
        cond.true(ConditionType.RELOCATING, Reason.MIGRATING, f"migration {rec.migration_name}")
        return
    if migrating:
        ours = rec is not None and any(
            m.name == rec.migration_name for m in obs.migrations if not m.final
        )
        if ours and rec is not None:
            cond.true(
                ConditionType.RELOCATING,
                Reason.MIGRATING,
                f"migration {rec.migration_name} (attempt {rec.attempt}) from {rec.from_node}",
            )
        else:
            cond.true(
                ConditionType.RELOCATING,
                Reason.WAITING_FOR_OTHER_MIGRATION,
                "a migration not created for this relocation is in progress; waiting for it",
            )
        return
    if rec is not None and rec.result is RelocationResult.IN_PROGRESS and not rec.migration_name:
        cond.true(ConditionType.RELOCATING, Reason.RESTARTING, f"restarting off {rec.from_node}")
        return
    if not affinity_current or not same_affinity(vmi.affinity, desired):
        vm = obs.vm
        assert vm is not None
        if vm.restart_required:
            _restart_or_flag(
                ctx,
                spec,
                trigger,
                Reason.RELOCATION_REQUIRES_RESTART,
                "KubeVirt does not propagate the new affinity to the running instance "
                "(RestartRequired)",
                eligible,
            )
            return
        cond.true(
            ConditionType.RELOCATING,
            Reason.WAITING_FOR_AFFINITY,
            "waiting until KubeVirt copied the new affinity to the running instance",
        )
        return
    targets = [n for n in eligible if n != node_name]
    if not targets:
        msg = (
            "no other node has a verified profile among "
            f"[{', '.join(res.satisfying) or 'none'}]; no migration is created until one has"
        )
        cond.false(ConditionType.RELOCATING, Reason.NO_COMPLIANT_NODE, msg)
        cond.true(ConditionType.PENDING, Reason.NO_COMPLIANT_NODE, msg)
        return
    if vmi.live_migratable is False:
        _restart_or_flag(
            ctx,
            spec,
            trigger,
            Reason.NOT_LIVE_MIGRATABLE,
            "the VM cannot be live-migrated",
            eligible,
        )
        return
    if rec is not None and rec.result is RelocationResult.FAILED and rec.end_time is not None:
        wait = ctx.cfg.backoff(rec.attempt) - (now - rec.end_time).total_seconds()
        if wait > 0:
            cond.true(
                ConditionType.RELOCATING,
                Reason.RETRY_BACKOFF,
                f"attempt {rec.attempt} failed; retrying in {wait:.0f} s",
            )
            ctx.plan.requeue(wait)
            return
    if not slot_granted:
        ctx.plan.slot_request = SlotRequest(
            SlotKind.SECURITY, node_name, res.request.sensitivity if res.request else 0, since
        )
        cond.true(
            ConditionType.RELOCATING,
            Reason.WAITING_FOR_MIGRATION_SLOT,
            "waiting for a migration slot (KubeVirt's per-cluster and per-node limits)",
        )
        return
    _start_migration(ctx, trigger, targets)


def _compliant(
    ctx: _Ctx, eligible: list[str], profile: str, migrating: bool, slot_granted: bool
) -> None:
    obs, cond, st, now = ctx.obs, ctx.cond, ctx.status, ctx.now
    spec = obs.svm.spec
    vmi = obs.vmi
    assert spec is not None
    assert vmi is not None
    assert vmi.node_name
    if st.non_compliant_since is not None:
        ctx.plan.signals.append(
            Signal("time_to_compliance", {}, (now - st.non_compliant_since).total_seconds())
        )
    st.non_compliant_since = None
    msg = f"runs on node {vmi.node_name}, whose verified profile {profile} satisfies the request"
    cond.true(ConditionType.COMPLIANT, Reason.COMPLIANT_NODE, msg)
    cond.true(ConditionType.READY, Reason.COMPLIANT_NODE, msg)
    cond.false(ConditionType.PENDING, Reason.PLACED, f"placed on {vmi.node_name}")
    rec = st.relocation
    if (
        rec is not None
        and rec.result is RelocationResult.FAILED
        and rec.trigger in SECURITY_TRIGGERS
    ):
        # The node became compliant again (e.g. trust restored): nothing left to retry.
        _close(
            ctx, rec, RelocationResult.ABANDONED, "", "the current node satisfies the request again"
        )
        st.relocation = None
        rec = None
        cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")
    if rec is not None and rec.result is RelocationResult.IN_PROGRESS:
        if (
            rec.migration_name
            and not migrating
            and not any(m.name == rec.migration_name for m in obs.migrations)
        ):
            ctx.plan.actions.append(_create_for(ctx, rec))
        cond.true(
            ConditionType.RELOCATING,
            Reason.MOVING_TARGET_DEFENSE
            if rec.trigger is RelocationTrigger.MOVING_TARGET_DEFENSE
            else Reason.MIGRATING,
            f"migration {rec.migration_name or '(restart)'} from {rec.from_node}",
        )
        return
    cond.false(ConditionType.RELOCATING, Reason.IDLE, "no relocation in progress")
    _moving_target(ctx, eligible, migrating, slot_granted)


def _moving_target(ctx: _Ctx, eligible: list[str], migrating: bool, slot_granted: bool) -> None:
    obs, st, now, cfg = ctx.obs, ctx.status, ctx.now, ctx.cfg
    spec, vmi = obs.svm.spec, obs.vmi
    assert spec is not None
    assert vmi is not None
    assert vmi.node_name
    mtd = spec.moving_target_defense
    if mtd is None:
        st.next_moving_target_time = None
        return
    seq = st.relocation_count or 0
    if st.next_moving_target_time is None:
        last = next((h.end_time for h in reversed(st.history or []) if h.end_time), None)
        st.next_moving_target_time = next_move_time(last or now, mtd, obs.svm.uid, seq)
    due = st.next_moving_target_time
    if now < due:
        ctx.plan.requeue((due - now).total_seconds())
        return
    if migrating or vmi.live_migratable is False:
        ctx.plan.requeue(cfg.mtd_retry_seconds)
        return
    targets = [n for n in eligible if n != vmi.node_name]
    if not targets:
        # Nowhere to move: try again later rather than piling up due moves.
        ctx.plan.requeue(cfg.mtd_retry_seconds)
        return
    if not slot_granted:
        ctx.plan.slot_request = SlotRequest(SlotKind.MOVING_TARGET, vmi.node_name, 0, due)
        ctx.plan.requeue(cfg.mtd_retry_seconds)
        return
    _start_migration(ctx, RelocationTrigger.MOVING_TARGET_DEFENSE, targets)
    st.next_moving_target_time = next_move_time(now, mtd, obs.svm.uid, st.relocation_count or 0)
    ctx.cond.true(
        ConditionType.RELOCATING,
        Reason.MOVING_TARGET_DEFENSE,
        f"moving target defense: moving off {vmi.node_name}",
    )


def _restart_allowed(spec: SecureVMSpec) -> bool:
    return bool(spec.relocation and spec.relocation.restart_allowed)


def _restart_or_flag(
    ctx: _Ctx,
    spec: SecureVMSpec,
    trigger: RelocationTrigger,
    reason: str,
    why: str,
    eligible: list[str],
) -> None:
    vmi = ctx.obs.vmi
    assert vmi is not None
    assert vmi.node_name
    if not _restart_allowed(spec):
        ctx.cond.false(
            ConditionType.RELOCATING,
            reason,
            f"{why}; set spec.relocation.restartAllowed to relocate it by a restart",
        )
        return
    if not [n for n in eligible if n != vmi.node_name]:
        ctx.cond.false(
            ConditionType.RELOCATING, Reason.NO_COMPLIANT_NODE, "no compliant node to restart on"
        )
        return
    seq = (ctx.status.relocation_count or 0) + 1
    ctx.status.relocation_count = seq
    ctx.status.relocation = RelocationRecord(
        trigger=trigger, from_node=vmi.node_name, attempt=1, start_time=ctx.now
    )
    ctx.plan.actions.append(RestartVMI(vmi.name, vmi.uid))
    ctx.plan.events.append(
        Event(
            EventType.WARNING,
            EventReason.RESTARTED,
            f"{why}: restarting the VM so it starts on a compliant node (restartAllowed)",
        )
    )
    ctx.plan.signals.append(Signal("relocation_started", {"trigger": str(trigger)}))
    ctx.cond.true(ConditionType.RELOCATING, Reason.RESTARTING, f"restarting off {vmi.node_name}")


def _fail_closed(ctx: _Ctx, spec: SecureVMSpec, since: datetime) -> bool:
    """Apply the fail-closed policy; True when the VM is being stopped (nothing else to do)."""
    policy = (spec.relocation.fail_closed if spec.relocation else None) or DEFAULT_FAIL_CLOSED
    deadline = since + timedelta(seconds=policy.deadline_seconds)
    vm = ctx.obs.vm
    assert vm is not None
    if ctx.now < deadline:
        ctx.plan.requeue((deadline - ctx.now).total_seconds())
        return False
    since_text = since.isoformat(timespec="seconds")
    if policy.action is FailClosedAction.STOP:
        msg = (
            f"non-compliant since {since_text}, past the {policy.deadline_seconds} s fail-closed "
            "deadline: the VM is stopped until a compliant node can run it"
        )
        if vm.run_strategy != "Halted":
            ctx.plan.actions.append(
                PatchVM(
                    vm.name,
                    {
                        "metadata": {"annotations": {STOPPED_ANNOTATION: vm.run_strategy}},
                        "spec": {"runStrategy": "Halted", "running": None},
                    },
                )
            )
            ctx.plan.events.append(Event(EventType.WARNING, EventReason.STOPPED, msg))
        ctx.cond.false(ConditionType.READY, Reason.FAIL_CLOSED_STOPPED, msg)
        ctx.cond.false(ConditionType.RELOCATING, Reason.FAIL_CLOSED_STOPPED, msg)
        return True
    ctx.cond.false(
        ConditionType.READY,
        Reason.FAIL_CLOSED_ALERT,
        f"non-compliant since {since_text}, past the {policy.deadline_seconds} s fail-closed "
        "deadline (action Alert: the VM keeps running)",
    )
    return False


def _pick_selector(ctx: _Ctx, targets: list[str], avoid: Sequence[str]) -> Mapping[str, str]:
    """Steer to one pre-validated node only when some compliant nodes must be avoided.

    Otherwise the scheduler picks among all compliant nodes (it knows capacity; the cost
    preferences already steer to the cheapest class).
    """
    nodes = ctx.obs.nodes
    cooldown = timedelta(seconds=ctx.cfg.node_cooldown_seconds)
    flapping = {
        n for n in targets if (t := nodes.revoked_at.get(n)) is not None and ctx.now - t < cooldown
    }
    shunned = set(avoid) | flapping
    if not shunned & set(targets):
        return {}
    preferred = [n for n in targets if n not in shunned] or [n for n in targets if n not in avoid]
    if not preferred:
        return {}  # every candidate failed before: let the scheduler try again
    costs = {name: p.cost for name, p in ctx.obs.catalog.items()}
    satisfying = ctx.obs.resolution.satisfying

    def rank(name: str) -> tuple[int, int, str]:
        node = nodes.nodes[name]
        cost = min((costs.get(p, 1) for p in satisfying if p in node.verified), default=0)
        return (cost, nodes.load.get(name, 0), name)

    best = min(preferred, key=rank)
    hostname = nodes.nodes[best].labels.get(HOSTNAME_LABEL)
    return {HOSTNAME_LABEL: hostname} if hostname else {}


def _start_migration(ctx: _Ctx, trigger: RelocationTrigger, targets: list[str]) -> None:
    st, vmi = ctx.status, ctx.obs.vmi
    assert vmi is not None
    assert vmi.node_name
    rec = st.relocation
    if rec is not None and rec.result is RelocationResult.FAILED:
        seq = st.relocation_count or 1
        attempt = rec.attempt + 1
        avoid = list(rec.avoid_nodes or [])
        trigger = rec.trigger
    else:
        seq = (st.relocation_count or 0) + 1
        attempt, avoid = 1, []
    st.relocation_count = seq
    name = migration_name(ctx.svm.vm_name, ctx.svm.uid, seq, attempt, str(trigger))
    selector = _pick_selector(ctx, targets, avoid)
    new = RelocationRecord(
        trigger=trigger,
        from_node=vmi.node_name,
        migration_name=name,
        attempt=attempt,
        start_time=ctx.now,
        avoid_nodes=avoid or None,
        steered_to=next(iter(selector.values()), ""),
    )
    st.relocation = new
    ctx.plan.actions.append(
        CreateMigration(name, vmi.name, migration_body(name, ctx.svm, vmi.name, trigger, selector))
    )
    ctx.plan.events.append(
        Event(
            EventType.NORMAL,
            EventReason.MIGRATION_CREATED,
            f"{trigger}: migration {name} (attempt {attempt}) off {vmi.node_name}; "
            f"{len(targets)} compliant target node(s)"
            + (f", steered to {next(iter(selector.values()))}" if selector else ""),
        )
    )
    ctx.plan.signals.append(Signal("relocation_started", {"trigger": str(trigger)}))
    ctx.cond.true(
        ConditionType.RELOCATING,
        Reason.MIGRATING,
        f"migration {name} (attempt {attempt}) from {vmi.node_name}",
    )


def _recorded_not_created(
    rec: RelocationRecord | None, migrating: bool, migrations: Sequence[MigrationView]
) -> bool:
    return (
        rec is not None
        and rec.result is RelocationResult.IN_PROGRESS
        and bool(rec.migration_name)
        and not migrating
        and not any(m.name == rec.migration_name for m in migrations)
    )


def _create_for(ctx: _Ctx, rec: RelocationRecord) -> CreateMigration:
    vmi = ctx.obs.vmi
    assert vmi is not None
    selector = {HOSTNAME_LABEL: rec.steered_to} if rec.steered_to else {}
    return CreateMigration(
        rec.migration_name,
        vmi.name,
        migration_body(rec.migration_name, ctx.svm, vmi.name, rec.trigger, selector),
    )
