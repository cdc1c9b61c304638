"""What relocation rules read (`Situation`) and answer (`Decision`), and how a chain is evaluated.

The model is cert-manager's certificate trigger policy chain: small named rules, each
`(situation) -> decision | None`, evaluated in order; the first that decides wins. A rule
reads a frozen `Situation` and returns a `Decision` value, so each is tested alone without
building a plan. `planning.Planning.apply` folds the winning decision into the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sod_operator.api.conditions import ConditionType
from sod_operator.api.v1alpha1.base import ConditionStatus
from sod_operator.api.v1alpha1.securevm import (
    FailClosedPolicy,
    RelocationRecord,
    RelocationTrigger,
    SecureVMSpec,
)
from sod_operator.policy.observed import VMIView, VMView
from sod_operator.policy.placement import migration_cpu_labels, reachable
from sod_operator.policy.plan import Action, Event, Observation, Signal, SlotRequest
from sod_operator.policy.settings import RelocationSettings

DEFAULT_FAIL_CLOSED = FailClosedPolicy()
ConditionSet = tuple[ConditionType, ConditionStatus, str, str]


@dataclass(frozen=True)
class Situation:
    """One running VMI and its SecureVM, with the relocation record as observations left it."""

    obs: Observation
    cfg: RelocationSettings
    now: datetime
    trigger: RelocationTrigger
    """Why it would move now (MovingTargetDefense for a compliant VM)."""
    since: datetime
    """When the VM was first seen on a non-compliant node (the planning time if compliant)."""
    eligible: Sequence[str]
    migrating: bool
    """A migration of the VMI is in flight (ours or anyone's)."""
    affinity_propagated: bool
    """The VM has the desired affinity and KubeVirt has copied it to the running VMI."""
    record: RelocationRecord | None
    relocation_count: int
    slot_granted: bool = False
    next_move: datetime | None = None
    """When moving target defense moves the VM next (None when it is off)."""

    @property
    def vmi(self) -> VMIView:
        assert self.obs.vmi is not None
        return self.obs.vmi

    @property
    def vm(self) -> VMView:
        assert self.obs.vm is not None
        return self.obs.vm

    @property
    def node(self) -> str:
        return self.vmi.node_name or ""

    @property
    def spec(self) -> SecureVMSpec:
        assert self.obs.svm.spec is not None
        return self.obs.svm.spec

    @property
    def targets(self) -> list[str]:
        """Compliant nodes other than the VM's own."""
        return [n for n in self.eligible if n != self.node]

    @property
    def reachable_targets(self) -> list[str]:
        """The targets a live migration can land on: KubeVirt pins a host-model VM's target
        pod to the source's CPU model and vendor (a restart is not bound by this)."""
        nodes = self.obs.nodes
        source = nodes.view(self.node)
        if source is None:
            return self.targets
        required = migration_cpu_labels(source, self.vmi.cpu_model)
        if not required:
            return self.targets
        return [n for n in self.targets if (v := nodes.view(n)) and reachable(v, required)]

    @property
    def restart_allowed(self) -> bool:
        return restart_allowed(self.spec)


@dataclass(frozen=True)
class Decision:
    """A rule's answer: the `Relocating` condition and everything that follows from it."""

    relocating: ConditionStatus
    reason: str
    message: str
    conditions: tuple[ConditionSet, ...] = ()
    """Other conditions the decision overrides (e.g. `Pending` when no target exists)."""
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    signals: tuple[Signal, ...] = ()
    record: RelocationRecord | None = None
    """A relocation (attempt) started: the new `status.relocation`, written before its action."""
    relocation_count: int | None = None
    requeue: float | None = None
    slot_request: SlotRequest | None = None
    starved: bool = False
    """No compliant node to go to: re-plan when a node gains a profile."""
    next_move: datetime | None = None


Rule = Callable[[Situation], Decision | None]


relocating = partial(Decision, ConditionStatus.TRUE)
"""A decision with `Relocating=True`: something is (about to be) under way."""
not_relocating = partial(Decision, ConditionStatus.FALSE)
"""A decision with `Relocating=False`: nothing moves, the reason says why."""


def first(rules: Sequence[Rule], situation: Situation) -> Decision:
    """The decision of the first rule that decides; every chain ends with one that always does."""
    for rule in rules:
        decision = rule(situation)
        if decision is not None:
            return decision
    names = [r.__name__ for r in rules]
    raise AssertionError(f"no rule of {names} decided: a chain must end with one that always does")


def restart_allowed(spec: SecureVMSpec) -> bool:
    """Whether the SecureVM lets relocation restart a VM that migration cannot move."""
    return bool(spec.relocation and spec.relocation.restart_allowed)


def overdue(policy: FailClosedPolicy, since: datetime) -> str:
    """How long past its fail-closed deadline a VM non-compliant `since` is (for messages)."""
    return (
        f"non-compliant since {since.isoformat(timespec='seconds')}, past the "
        f"{policy.deadline_seconds} s fail-closed deadline"
    )


def fail_closed_deadline(spec: SecureVMSpec, since: datetime) -> tuple[FailClosedPolicy, datetime]:
    """The SecureVM's fail-closed policy and when it applies to a VM non-compliant `since`."""
    policy = (spec.relocation.fail_closed if spec.relocation else None) or DEFAULT_FAIL_CLOSED
    return policy, since + timedelta(seconds=policy.deadline_seconds)
