"""Deployment mode: the VirtualMachine exists (created from `spec.template`, or adopted via
`spec.vmRef`), and a VM without a running instance waits for a compliant node.

An unscheduled VMI whose affinity is stale is recreated (a pod's affinity cannot change in
place); a VM stopped by the fail-closed policy is started again once a compliant node exists.
"""

from __future__ import annotations

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.constants import SECUREVM_LABEL
from sod_operator.policy.observed import STOPPED_ANNOTATION, TEMPLATE_HASH_ANNOTATION, VMView
from sod_operator.policy.plan import (
    CreateVM,
    Event,
    EventType,
    Json,
    PatchVM,
    ReplaceVMSpec,
    RestartVMI,
    same_affinity,
    template_hash,
    vm_body,
    with_affinity,
)
from sod_operator.policy.planning import Planning
from sod_operator.policy.records import finish_restart
from sod_operator.policy.vmsettings import render

# -------------------------------------------------------------------------------- the VM


def ensure_vm(ctx: Planning, desired: Json, eligible: list[str]) -> bool:
    """Create or adopt the VM; False when there is nothing (more) to decide this time."""
    if ctx.obs.vm_owner is not None:
        conflict(ctx, f"VirtualMachine {ctx.svm.vm_name} is managed by SecureVM {ctx.obs.vm_owner}")
        return False
    if ctx.svm.spec is not None and ctx.svm.spec.template is not None:
        return _ensure_template_vm(ctx, ctx.svm.spec.template, desired, eligible)
    return _ensure_adopted_vm(ctx)


def _ensure_template_vm(ctx: Planning, template: Json, desired: Json, eligible: list[str]) -> bool:
    svm, vm = ctx.svm, ctx.obs.vm
    rendered = render(template, ctx.vm_class)  # the chosen class's settings (issue 14)
    if vm is None and ctx.obs.vm_rejected:
        msg = (
            f"the VirtualMachine made from spec.template was refused: {ctx.obs.vm_rejected}; "
            "fix spec.template (a KubeVirt VirtualMachineSpec)"
        )
        ctx.cond.false(ConditionType.READY, Reason.VM_REJECTED, msg)
        unknown_placement(ctx, Reason.VM_REJECTED, "no VirtualMachine")
        return False
    if vm is None:
        event = Event(
            EventType.NORMAL, EventReason.VM_CREATED, f"created VirtualMachine {svm.vm_name}"
        )
        ctx.act(CreateVM(vm_body(svm, rendered, desired)), event)
        waiting(ctx, eligible, "VirtualMachine created")
        return False
    if svm.uid not in vm.owner_uids:
        msg = (
            f"VirtualMachine {vm.name} exists and is not owned by this SecureVM: rename the "
            "SecureVM, or adopt the VM with `spec.vmRef`"
        )
        conflict(ctx, msg)
        return False
    if vm.template_hash != template_hash(template):
        # The tenant edited the template: re-apply it (KubeVirt decides what needs a restart).
        hashed = {TEMPLATE_HASH_ANNOTATION: template_hash(template)}
        event = Event(EventType.NORMAL, EventReason.VM_UPDATED, "applied the changed spec.template")
        ctx.act(ReplaceVMSpec(vm.name, with_affinity(rendered, desired), hashed), event)
    return True


def _ensure_adopted_vm(ctx: Planning) -> bool:
    svm, vm = ctx.svm, ctx.obs.vm
    if vm is None:
        msg = f"VirtualMachine {svm.vm_name} (spec.vmRef) not found in namespace {svm.namespace}"
        ctx.cond.false(ConditionType.READY, Reason.VM_NOT_FOUND, msg)
        unknown_placement(ctx, Reason.VM_NOT_FOUND, "no VirtualMachine")
        return False
    owner = vm.securevm
    if owner is not None and owner != svm.name:
        conflict(ctx, f"VirtualMachine {vm.name} is already managed by SecureVM {owner}")
        return False
    if owner is None:
        label = PatchVM(vm.name, {"metadata": {"labels": {SECUREVM_LABEL: svm.name}}})
        event = Event(EventType.NORMAL, EventReason.VM_ADOPTED, f"adopted VirtualMachine {vm.name}")
        ctx.act(label, event)
    return True


# -------------------------------------------------------------------------------- no instance


def conflict(ctx: Planning, message: str) -> None:
    """Another SecureVM manages the VM: say so, and claim nothing about where it runs (no
    stale NODE/PROFILE columns, Compliant Unknown)."""
    ctx.cond.false(ConditionType.READY, Reason.VM_CONFLICT, message)
    unknown_placement(ctx, Reason.VM_CONFLICT, message)
    ctx.status.non_compliant_since = None


def unknown_placement(ctx: Planning, reason: str, message: str) -> None:
    for ctype in (ConditionType.COMPLIANT, ConditionType.NON_MIGRATABLE):
        ctx.cond.unknown(ctype, reason, message)
    ctx.cond.false(ConditionType.RELOCATING, Reason.IDLE, "no relocation in progress")
    ctx.cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")
    ctx.status.node_name = None
    ctx.status.node_profile = None


def unplaced(ctx: Planning, reason: str, message: str) -> None:
    unknown_placement(ctx, Reason.NOT_RUNNING, "the VM has no running instance")
    pending_reason = reason if reason != Reason.NOT_RUNNING else Reason.WAITING_FOR_SCHEDULING
    ctx.cond.true(ConditionType.PENDING, pending_reason, message)
    ctx.cond.false(ConditionType.READY, reason, message)


def waiting(ctx: Planning, eligible: list[str], what: str) -> None:
    satisfying = ctx.obs.resolution.satisfying
    if not satisfying:
        unplaced(ctx, Reason.NO_SATISFYING_PROFILE, f"{what}; no profile satisfies the request")
    elif not eligible:
        unplaced(
            ctx,
            Reason.NO_COMPLIANT_NODE,
            f"{what}; no node has a verified profile among [{', '.join(satisfying)}]: "
            "the VM is placed as soon as one has",
        )
    else:
        unplaced(
            ctx,
            Reason.WAITING_FOR_SCHEDULING,
            f"{what}; {len(eligible)} compliant node(s), waiting for the scheduler",
        )


def not_running(
    ctx: Planning, eligible: list[str], desired: Json, affinity_current: bool, migrating: bool
) -> None:
    vm, vmi = ctx.obs.vm, ctx.obs.vmi
    assert vm is not None
    ctx.status.non_compliant_since = None
    finish_restart(ctx)
    if vm.stopped_by_fail_closed is not None:
        _stopped_by_fail_closed(ctx, vm, eligible)
        return
    if vmi is None:
        if vm.run_strategy == "Halted":
            unknown_placement(ctx, Reason.NOT_RUNNING, "the VM is stopped (runStrategy Halted)")
            ctx.cond.false(ConditionType.PENDING, Reason.NOT_RUNNING, "the VM is stopped")
            ctx.cond.false(ConditionType.READY, Reason.NOT_RUNNING, "the VM is stopped")
            return
        waiting(ctx, eligible, "waiting for KubeVirt to start the VM's instance")
        return
    # A VMI not yet on a node keeps the pod it was created with: if its affinity is stale
    # (e.g. the request became satisfiable), only a new instance picks the VM's new affinity.
    stale = not same_affinity(vmi.affinity, desired)
    if vmi.node_name is None and affinity_current and not migrating and stale:
        event = Event(
            EventType.NORMAL,
            EventReason.RESTARTED_PENDING,
            "the unscheduled instance had a stale affinity: recreated with the current one",
        )
        ctx.act(RestartVMI(vmi.name, vmi.uid), event)
    waiting(ctx, eligible, "waiting for the instance to be scheduled")


def _stopped_by_fail_closed(ctx: Planning, vm: VMView, eligible: list[str]) -> None:
    """Restore the run strategy the fail-closed policy replaced, once a compliant node exists."""
    strategy = vm.stopped_by_fail_closed
    if not eligible:
        unplaced(
            ctx,
            Reason.FAIL_CLOSED_STOPPED,
            "stopped by the fail-closed policy; it starts again when a compliant node exists",
        )
        return
    restore = PatchVM(
        vm.name,
        {
            "metadata": {"annotations": {STOPPED_ANNOTATION: None}},
            "spec": {"runStrategy": strategy, "running": None},
        },
    )
    event = Event(
        EventType.NORMAL,
        EventReason.RESTORED,
        f"{len(eligible)} compliant node(s) available again: restarting the VM "
        f"(runStrategy {strategy})",
    )
    ctx.act(restore, event)
    unplaced(ctx, Reason.WAITING_FOR_SCHEDULING, "restarting after a fail-closed stop")
