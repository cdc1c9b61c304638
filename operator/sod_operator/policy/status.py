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


_TRANSITIONAL = frozenset(
    {Reason.NOT_RUNNING, Reason.WAITING_FOR_SCHEDULING, Reason.WAITING_FOR_AFFINITY, Reason.UNKNOWN}
)


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
        """The new conditions (apimachinery's `SetStatusCondition` per type) and their Events.

        An unchanged condition keeps its very object, so a no-op reconcile allocates nothing
        and compares equal to the old status (no write).
        """
        by_type = {c.type: c for c in old}
        events: list[Event] = []
        out: list[Condition] = []
        for ctype in ConditionType:
            status, reason, message = self.values.get(
                ctype, (ConditionStatus.UNKNOWN, Reason.UNKNOWN, "not evaluated yet")
            )
            message = message[:32768]
            before = by_type.pop(str(ctype), None)
            if before is not None and (
                before.status,
                before.reason,
                before.message,
                before.observed_generation,
            ) == (status, reason, message, generation):
                out.append(before)
                continue
            out.append(self._set(before, ctype, status, reason, message, generation, now))
            if status is ConditionStatus.UNKNOWN or (
                before is not None and (before.status, before.reason) == (status, reason)
            ):
                continue
            if ctype is ConditionType.READY and reason in _TRANSITIONAL:
                continue  # on the way somewhere: the decision that follows gets the Event
            if ctype is ConditionType.READY or status is _BAD.get(ctype):
                bad = status is _BAD.get(ctype) or (
                    ctype is ConditionType.READY and status is ConditionStatus.FALSE
                )
                events.append(
                    Event(EventType.WARNING if bad else EventType.NORMAL, reason, message)
                )
        out.extend(by_type.values())  # conditions of types we do not own are kept as they are
        return out, events

    @staticmethod
    def _set(
        before: Condition | None,
        ctype: ConditionType,
        status: ConditionStatus,
        reason: str,
        message: str,
        generation: int,
        now: datetime,
    ) -> Condition:
        olds = [] if before is None else [before.to_state()]
        (state,), _ = set_condition(
            olds,
            ConditionState(
                type=str(ctype),
                status=str(status),
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=now,
            ),
        )
        return Condition.from_state(state)


def find_condition(status: SecureVMStatus, ctype: ConditionType) -> Condition | None:
    for c in status.conditions or []:
        if c.type == ctype:
            return c
    return None
