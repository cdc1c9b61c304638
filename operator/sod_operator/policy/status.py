"""Conditions of one reconcile, merged into the old ones with apimachinery semantics.

Every condition type is set on every visit (as Unknown when not evaluated); a change of
status or reason of `Ready`, or a condition turning bad, becomes an Event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sod_operator.api.conditions import ConditionState, ConditionType, Reason, set_condition
from sod_operator.api.v1alpha1.base import Condition, ConditionStatus
from sod_operator.api.v1alpha1.securevm import SecureVMStatus
from sod_operator.policy.plan import Event, EventType

_BAD = {
    ConditionType.COMPLIANT: ConditionStatus.FALSE,
    ConditionType.UNSATISFIABLE: ConditionStatus.TRUE,
    ConditionType.RELOCATION_FAILED: ConditionStatus.TRUE,
    ConditionType.NON_MIGRATABLE: ConditionStatus.TRUE,
}


class Conditions:
    """Collects the conditions of one reconcile and merges them with apimachinery semantics."""

    def __init__(self) -> None:
        self.values: dict[ConditionType, tuple[ConditionStatus, str, str]] = {}

    def set(self, ctype: ConditionType, status: ConditionStatus, reason: str, message: str) -> None:
        self.values[ctype] = (status, reason, message)

    def true(self, ctype: ConditionType, reason: str, message: str) -> None:
        self.set(ctype, ConditionStatus.TRUE, reason, message)

    def false(self, ctype: ConditionType, reason: str, message: str) -> None:
        self.set(ctype, ConditionStatus.FALSE, reason, message)

    def unknown(self, ctype: ConditionType, reason: str, message: str) -> None:
        self.set(ctype, ConditionStatus.UNKNOWN, reason, message)

    def merge(
        self, old: Sequence[Condition], generation: int, now: datetime
    ) -> tuple[list[Condition], list[Event]]:
        states = [
            ConditionState(
                type=c.type,
                status=str(c.status),
                reason=c.reason,
                message=c.message,
                observed_generation=c.observed_generation,
                last_transition_time=c.last_transition_time,
            )
            for c in old
        ]
        previous = {c.type: (c.status, c.reason) for c in old}
        events: list[Event] = []
        for ctype in ConditionType:
            status, reason, message = self.values.get(
                ctype, (ConditionStatus.UNKNOWN, Reason.UNKNOWN, "not evaluated yet")
            )
            states, _ = set_condition(
                states,
                ConditionState(
                    type=str(ctype),
                    status=str(status),
                    reason=reason,
                    message=message[:32768],
                    observed_generation=generation,
                    last_transition_time=now,
                ),
            )
            before = previous.get(str(ctype))
            if status is ConditionStatus.UNKNOWN or before == (status, reason):
                continue
            if ctype is ConditionType.READY or status is _BAD.get(ctype):
                bad = status is _BAD.get(ctype) or (
                    ctype is ConditionType.READY and status is ConditionStatus.FALSE
                )
                events.append(
                    Event(EventType.WARNING if bad else EventType.NORMAL, reason, message)
                )
        order = {str(t): i for i, t in enumerate(ConditionType)}
        states.sort(key=lambda s: order.get(s.type, len(order)))
        return [
            Condition(
                type=s.type,
                status=ConditionStatus(s.status),
                reason=s.reason,
                message=s.message,
                observed_generation=s.observed_generation,
                last_transition_time=s.last_transition_time,
            )
            for s in states
        ], events


def find_condition(status: SecureVMStatus, ctype: ConditionType) -> Condition | None:
    for c in status.conditions or []:
        if c.type == ctype:
            return c
    return None
