"""What the periodic full re-check corrected: the event-driven path should have left nothing.

Every SecureVM is re-planned every `RelocationSettings.resync_seconds` (60 s) whether or not an
event arrived. A re-plan that wants to act on the cluster, or changes what the SecureVM claims
(its Ready or Compliant condition, its node or profile), found something the watches did not
deliver (a missed or reordered event, or a bug): `sod_resync_corrections_total` counts them, by
`what`, so a non-zero rate is a finding, not noise.

Why 60 s: it bounds how long a missed event can leave a SecureVM's claim wrong (issue 19 found
7.5 minutes with the old 600 s). A pass costs what planning every SecureVM costs: about 0.8 s
per 2,000 SecureVMs on the benchmark machine (BENCHMARKS.md, baseline of the scale benchmark,
which re-plans the whole fleet), i.e. ~1.5 % of one core at 2,000 and ~20 % at 20,000, where
operators may raise `resyncSeconds`; it writes nothing when nothing changed.
"""

from __future__ import annotations

from sod_operator.api.conditions import ConditionType
from sod_operator.api.v1alpha1.securevm import SecureVMStatus
from sod_operator.policy.plan import Plan
from sod_operator.policy.status import find_condition

_CLAIMS = (ConditionType.READY, ConditionType.COMPLIANT)


def correction(current: SecureVMStatus, plan: Plan) -> str | None:
    """What a re-plan corrects: "actions", "claim" (Ready/Compliant, node, profile), or None."""
    if plan.actions or plan.slot_request is not None:
        return "actions"
    new = plan.status
    if (current.node_name, current.node_profile) != (new.node_name, new.node_profile):
        return "claim"
    for ctype in _CLAIMS:
        old_c, new_c = find_condition(current, ctype), find_condition(new, ctype)
        before = (str(old_c.status), old_c.reason) if old_c else None
        after = (str(new_c.status), new_c.reason) if new_c else None
        if before != after:
            return "claim"
    return None
