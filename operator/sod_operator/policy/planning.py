"""One reconcile in progress: what it reads, and the plan and conditions decided so far."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sod_operator.api.conditions import ConditionType
from sod_operator.api.v1alpha1.securevm import SecureVMStatus
from sod_operator.policy.decision import Decision
from sod_operator.policy.observed import SecureVMView
from sod_operator.policy.plan import Action, Event, Observation, Plan
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.status import Conditions
from sod_operator.policy.vmsettings import NONE, VMSettings


@dataclass
class Planning:
    obs: Observation
    cfg: RelocationSettings
    now: datetime
    plan: Plan
    cond: Conditions
    slot_granted: bool = False
    vm_class: VMSettings = NONE
    """The VM settings of the class chosen for this VM (`policy.class_choice`)."""

    @property
    def svm(self) -> SecureVMView:
        return self.obs.svm

    @property
    def status(self) -> SecureVMStatus:
        """The status being planned (a copy: the observed one is never mutated)."""
        return self.plan.status

    def act(self, action: Action, event: Event) -> None:
        self.plan.actions.append(action)
        self.plan.events.append(event)

    def apply(self, decision: Decision) -> None:
        """Fold a relocation rule's decision into the plan and the conditions."""
        d, plan = decision, self.plan
        self.cond.set(ConditionType.RELOCATING, d.relocating, d.reason, d.message)
        for ctype, status, reason, message in d.conditions:
            self.cond.set(ctype, status, reason, message)
        plan.actions.extend(d.actions)
        plan.events.extend(d.events)
        plan.signals.extend(d.signals)
        if d.record is not None:
            plan.status.relocation = d.record
        if d.relocation_count is not None:
            plan.status.relocation_count = d.relocation_count
        if d.requeue is not None:
            plan.requeue(d.requeue)
        if d.slot_request is not None:
            plan.slot_request = d.slot_request
        if d.next_move is not None:
            plan.status.next_moving_target_time = d.next_move
        plan.starved = plan.starved or d.starved
