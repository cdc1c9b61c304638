"""Relocation rules for what real KubeVirt does to a migration (issue 13 item 5).

Each is a `(Situation) -> Decision | None` rule of the chain `policy.rules.RELOCATION`, kept
here so the chain's core stays short.
"""

from __future__ import annotations

from sod_operator.api.conditions import ConditionType, Reason
from sod_operator.api.v1alpha1.base import ConditionStatus
from sod_operator.policy.decision import Decision, Situation, not_relocating
from sod_operator.policy.placement import migration_cpu_labels


def no_reachable_target(s: Situation) -> Decision | None:
    """Compliant targets exist, but KubeVirt would pin the target pod to the source's host CPU
    model and vendor and none has them (a mixed AMD/Intel fleet): a migration would wait
    unschedulable and fail after 5 minutes, again and again. Create none; say why."""
    if not s.targets or s.reachable_targets:
        return None
    source = s.obs.nodes.view(s.node)
    required = migration_cpu_labels(source, s.vmi.cpu_model) if source else {}
    cpu = ", ".join(k.split("/", 1)[1] for k in sorted(required)) or "its CPU"
    msg = (
        f"compliant node(s) [{', '.join(s.targets)}] cannot take this host-model VM: KubeVirt "
        f"requires the source's CPU ({cpu}) on the migration target; no migration is created "
        "until a compliant node with that CPU exists"
    )
    pending = (ConditionType.PENDING, ConditionStatus.TRUE, Reason.NO_REACHABLE_NODE, msg)
    return not_relocating(Reason.NO_REACHABLE_NODE, msg, conditions=(pending,), starved=True)
