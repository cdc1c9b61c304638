"""The relocation record (`status.relocation`) folded forward by what KubeVirt reports.

Before any rule decides, the record is brought up to date: a restart ends when the old
instance is gone, a migration when KubeVirt reports it final (or its VMI moved and the
migration was garbage-collected), a failed security relocation is abandoned when the node is
compliant again. A closed record goes to the bounded `status.history`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.v1alpha1.securevm import (
    RelocationRecord,
    RelocationResult,
    RelocationTrigger,
)
from sod_operator.policy.observed import MigrationState, MigrationView, VMIView
from sod_operator.policy.plan import Event, EventType, RelocationFinished
from sod_operator.policy.planning import Planning

SECURITY_TRIGGERS = frozenset(RelocationTrigger) - {RelocationTrigger.MOVING_TARGET_DEFENSE}
REFUSED = "refused at admission by virt-api"
"""Prefix of a failed attempt's message when virt-api never admitted its migration."""


def recorded_not_created(
    rec: RelocationRecord | None, migrating: bool, migrations: Sequence[MigrationView]
) -> TypeGuard[RelocationRecord]:
    """A migration recorded in status but never observed: we crashed (or were restarted)
    between the record and the create. Creating the same name again is idempotent."""
    return (
        rec is not None
        and rec.result is RelocationResult.IN_PROGRESS
        and bool(rec.migration_name)
        and not migrating
        and not any(m.name == rec.migration_name for m in migrations)
    )


def close(
    ctx: Planning, rec: RelocationRecord, result: RelocationResult, to_node: str, message: str
) -> None:
    """End the record into the history; a failed one stays current (it is retried)."""
    st = ctx.status
    done = rec.model_copy(
        update={"result": result, "to_node": to_node, "end_time": ctx.now, "message": message}
    )
    st.history = [*(st.history or []), done][-ctx.cfg.history_limit :]
    st.relocation = done if result is RelocationResult.FAILED else None
    if result is RelocationResult.SUCCEEDED:
        # The VM just moved: the next moving-target move counts from here.
        st.next_moving_target_time = None
    seconds = (ctx.now - rec.start_time).total_seconds()
    ctx.plan.signals.append(RelocationFinished(rec.trigger, result, seconds))


def finish_restart(ctx: Planning) -> None:
    """A restart relocation ends when the old instance is gone."""
    rec, vmi = ctx.status.relocation, ctx.obs.vmi
    if rec is None or rec.migration_name or rec.result is not RelocationResult.IN_PROGRESS:
        return
    if vmi is not None and vmi.running and vmi.node_name != rec.from_node:
        close(
            ctx,
            rec,
            RelocationResult.SUCCEEDED,
            vmi.node_name or "",
            "restarted on a compliant node",
        )


def abandon_failed(ctx: Planning) -> None:
    """The node became compliant again (e.g. trust restored): nothing left to retry."""
    rec = ctx.status.relocation
    if rec is None or rec.result is not RelocationResult.FAILED:
        return
    if rec.trigger not in SECURITY_TRIGGERS:
        return
    close(ctx, rec, RelocationResult.ABANDONED, "", "the current node satisfies the request again")
    ctx.status.relocation = None
    ctx.cond.false(ConditionType.RELOCATION_FAILED, Reason.NO_FAILURE, "no failed relocation")


def track_migration(ctx: Planning) -> None:
    """Fold the observed state of our recorded migration into the record."""
    rec, vmi = ctx.status.relocation, ctx.obs.vmi
    if rec is None or not rec.migration_name or rec.result is not RelocationResult.IN_PROGRESS:
        return
    assert vmi is not None
    mig = next((m for m in ctx.obs.migrations if m.name == rec.migration_name), None)
    if mig is None and _refused(ctx, rec):
        return
    if mig is None and rec.vmi_uid and rec.vmi_uid != vmi.uid:
        # The instance it was for is gone, and virt-controller deleted its migrations with it:
        # never create it again for the new instance (the rules decide afresh).
        message = f"the VM's instance {rec.vmi_uid} was replaced; its migration went with it"
        close(ctx, rec, RelocationResult.ABANDONED, "", message)
        event = f"migration {rec.migration_name} (attempt {rec.attempt}) abandoned: {message}"
        ctx.plan.events.append(Event(EventType.WARNING, EventReason.MIGRATION_VANISHED, event))
        return
    if mig is None:
        if not vmi.migrating and vmi.node_name != rec.from_node:
            # The migration finished and was garbage-collected before we saw its final phase.
            close(ctx, rec, RelocationResult.SUCCEEDED, vmi.node_name or "", "migrated")
        return
    # The VMI reports the outcome of its migration (matched by uid) as soon as the VMIM does.
    state = vmi.migration if vmi.migration and vmi.migration.migration_uid == mig.uid else None
    if mig.succeeded or bool(state and state.completed and not state.failed):
        _succeeded(ctx, rec, mig, vmi)
    elif mig.phase == "Failed" or bool(state and state.failed):
        _failed(ctx, rec, mig, vmi, state)


def _refused(ctx: Planning, rec: RelocationRecord) -> bool:
    """virt-api refused the recorded migration at admission: the attempt failed (so the rules
    back off, then retry under a new name), never re-sent under the same name at once."""
    refused = ctx.obs.migration_refused
    if refused is None or refused[0] != rec.migration_name:
        return False
    message = f"{REFUSED}: {refused[1]}"
    close(ctx, rec, RelocationResult.FAILED, "", message)
    ctx.plan.events.append(
        Event(
            EventType.WARNING,
            EventReason.MIGRATION_FAILED,
            f"migration {rec.migration_name} (attempt {rec.attempt}) {message}",
        )
    )
    return True


def _succeeded(ctx: Planning, rec: RelocationRecord, mig: MigrationView, vmi: VMIView) -> None:
    close(ctx, rec, RelocationResult.SUCCEEDED, vmi.node_name or mig.target_node, "migrated")
    ctx.plan.events.append(
        Event(
            EventType.NORMAL,
            EventReason.MIGRATION_SUCCEEDED,
            f"migration {mig.name} moved the VM from {rec.from_node} to {vmi.node_name}",
        )
    )


def _failed(
    ctx: Planning,
    rec: RelocationRecord,
    mig: MigrationView,
    vmi: VMIView,
    state: MigrationState | None,
) -> None:
    """Close the attempt as failed, its target added to the nodes the retry avoids."""
    target = mig.target_node or (state.target_node if state else "")
    reason = (
        mig.failure_reason
        or (vmi.migration.failure_reason if vmi.migration else "")
        or "KubeVirt reported phase Failed"
    )
    avoid = list(rec.avoid_nodes or [])
    if target and target not in avoid:
        avoid.append(target)
    attempt = rec.model_copy(update={"avoid_nodes": avoid[-16:] or None})
    close(ctx, attempt, RelocationResult.FAILED, target, reason)
    on_target = f" on target {target}" if target else ""
    ctx.plan.events.append(
        Event(
            EventType.WARNING,
            EventReason.MIGRATION_FAILED,
            f"migration {mig.name} (attempt {rec.attempt}) failed{on_target}: {reason}",
        )
    )
