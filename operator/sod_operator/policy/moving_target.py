"""Moving target defense (paper, Section III-E): when a compliant VM moves next, and the
rule chain that moves it.

The jitter is derived from the SecureVM's uid and relocation count, not from a random source:
the schedule survives an operator restart unchanged, and stays unpredictable across VMs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sod_operator.api.conditions import Reason
from sod_operator.api.v1alpha1.securevm import (
    MovingTargetDefense,
    RelocationResult,
    RelocationTrigger,
)
from sod_operator.policy.decision import Decision, Rule, Situation, not_relocating, relocating
from sod_operator.policy.plan import SlotKind, SlotRequest, migration_for
from sod_operator.policy.records import recorded_not_created
from sod_operator.policy.rules import start_migration


def jitter_fraction(uid: str, seq: int) -> float:
    """A deterministic value in [-1, 1] for (uid, seq)."""
    digest = hashlib.sha256(f"mtd/{uid}/{seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(2**64 - 1) * 2.0 - 1.0


def next_move_time(base: datetime, mtd: MovingTargetDefense, uid: str, seq: int) -> datetime:
    """`base` + interval ± jitter; never earlier than `base` + 1 s."""
    offset = mtd.interval_seconds + jitter_fraction(uid, seq) * mtd.jitter_seconds
    return base + timedelta(seconds=max(1.0, offset))


# --------------------------------------------------------------------------------------------
# The rules for a compliant VM, in order (`policy.decision`; tests/unit/policy/test_rules.py)


def _idle(**kw: Any) -> Decision:
    return not_relocating(Reason.IDLE, "no relocation in progress", **kw)


def relocation_in_progress(s: Situation) -> Decision | None:
    """A relocation is under way although the node is compliant (moving target defense, or a
    security relocation whose VM already arrived): report it, resume a recorded create."""
    rec = s.record
    if rec is None or rec.result is not RelocationResult.IN_PROGRESS:
        return None
    resume = recorded_not_created(rec, s.migrating, s.obs.migrations)
    mtd = rec.trigger is RelocationTrigger.MOVING_TARGET_DEFENSE
    return relocating(
        Reason.MOVING_TARGET_DEFENSE if mtd else Reason.MIGRATING,
        f"migration {rec.migration_name or '(restart)'} from {rec.from_node}",
        actions=(migration_for(s.obs.svm, s.vmi, rec),) if resume else (),
    )


def moving_target_off(s: Situation) -> Decision | None:
    return _idle() if s.spec.moving_target_defense is None else None


def moving_target_not_due(s: Situation) -> Decision | None:
    due = s.next_move
    assert due is not None
    return _idle(requeue=(due - s.now).total_seconds()) if s.now < due else None


def moving_target_blocked(s: Situation) -> Decision | None:
    """A migration is in flight, or the VM cannot be live-migrated: look again later."""
    if s.migrating or s.vmi.live_migratable is False:
        return _idle(requeue=s.cfg.mtd_retry_seconds)
    return None


def moving_target_no_target(s: Situation) -> Decision | None:
    """Nowhere to move: try again later rather than piling up due moves."""
    return None if s.targets else _idle(requeue=s.cfg.mtd_retry_seconds)


def moving_target_no_slot(s: Situation) -> Decision | None:
    """MTD slots come from their own budget, never while a security relocation waits/runs."""
    if s.slot_granted:
        return None
    assert s.next_move is not None
    request = SlotRequest(SlotKind.MOVING_TARGET, s.node, 0, s.next_move)
    return _idle(slot_request=request, requeue=s.cfg.mtd_retry_seconds)


def moving_target_move(s: Situation) -> Decision:
    mtd = s.spec.moving_target_defense
    assert mtd is not None
    started = start_migration(s, RelocationTrigger.MOVING_TARGET_DEFENSE)
    seq = started.relocation_count or 0
    return replace(
        started,
        reason=Reason.MOVING_TARGET_DEFENSE,
        message=f"moving target defense: moving off {s.node}",
        next_move=next_move_time(s.now, mtd, s.obs.svm.uid, seq),
    )


MOVING_TARGET: Sequence[Rule] = (
    moving_target_off,
    moving_target_not_due,
    moving_target_blocked,
    moving_target_no_target,
    moving_target_no_slot,
    moving_target_move,
)
