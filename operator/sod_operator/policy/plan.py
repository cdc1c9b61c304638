"""The planner's inputs and outputs: what one SecureVM's world looks like, and the plan.

Inputs are value objects over the operator's in-memory indexes (no copies of the cluster).
The output is a one-way contract: a `Plan` carries the status to write first and typed actions
that carry everything their execution needs (a migration's trigger, source node and attempt),
so the executor (`adapters.executor`) only matches on the action type and never reads a
decision back out of a body or a condition.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sod_operator.api.conditions import EventType as EventType  # re-exported: Event.type
from sod_operator.api.constants import (
    API_VERSION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SECUREVM_LABEL,
)
from sod_operator.api.v1alpha1.securevm import (
    RelocationRecord,
    RelocationResult,
    RelocationTrigger,
    SecureVMStatus,
)
from sod_operator.policy.evaluation import Resolution
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.observed import (
    TEMPLATE_HASH_ANNOTATION,
    TRIGGER_LABEL,
    MigrationView,
    VMIView,
    VMView,
)
from sod_operator.policy.observed import SecureVMView as SecureVMView  # an input, re-exported
from sod_operator.policy.placement import (
    NO_CONSTRAINTS,
    LauncherConstraints,
    NodeView,
    eligible_nodes,
)

Json = dict[str, Any]
_MAX_NAME = 63
HOSTNAME_LABEL = "kubernetes.io/hostname"


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class NodeSnapshot:
    """The nodes as the planner needs them; the operator passes its live indexes (no copies).

    `by_profile`: profile → nodes on which it is verified. `revoked_at`: when a node last lost
    a verified profile (flapping nodes are avoided as targets). `load`: VMIs per node.
    """

    nodes: Mapping[str, NodeView]
    by_profile: Mapping[str, frozenset[str] | set[str]]
    revoked_at: Mapping[str, datetime] = field(default_factory=dict)
    load: Mapping[str, int] = field(default_factory=dict)
    expiry: Mapping[str, Mapping[str, datetime]] = field(default_factory=dict)
    """node → profile → when its `Verified` verdict expires (NodeAttestation status)."""
    now: datetime | None = None
    """The planning time: a verdict expired by then voids its profile, label or not."""
    _eligible: dict[tuple[str, ...], tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def eligible(
        self,
        satisfying: Sequence[str],
        tenant_terms: Sequence[Json],
        launcher: LauncherConstraints = NO_CONSTRAINTS,
    ) -> list[str]:
        """Schedulable nodes with a verified satisfying profile that the tenant's terms and the
        launcher pod's other constraints (`LauncherConstraints`) admit.

        Work is proportional to the satisfying profiles' nodes, never to the whole cluster.
        """
        cache_key = tuple(satisfying)
        cacheable = not tenant_terms and launcher.plain
        if cacheable and cache_key in self._eligible:
            return list(self._eligible[cache_key])
        names: set[str] = set()
        for profile in satisfying:
            names.update(self.by_profile.get(profile, ()))
        candidates = (v for n in names if (v := self.view(n)) is not None)
        out = eligible_nodes(candidates, satisfying, tenant_terms, launcher)
        if cacheable:
            # One snapshot serves one planning batch: VMs with the same request share the answer.
            self._eligible[cache_key] = tuple(out)
        return out

    def at(self, now: datetime) -> NodeSnapshot:
        """This snapshot judged at `now` (itself when it already is: one batch shares one)."""
        if self.now == now:
            return self
        return replace(self, now=now, _eligible={})

    def view(self, name: str) -> NodeView | None:
        """The node with every profile whose verdict expired by `now` removed from `verified`:
        the labels alone never outlive the verdict that put them there (issue 17)."""
        node = self.nodes.get(name)
        if node is None:
            return None
        expired = self.expired(name, node)
        return replace(node, expired=expired) if expired else node

    def expired(self, name: str, node: NodeView) -> frozenset[str]:
        """Profiles labelled on the node whose verdict expired by `now`."""
        expiry = self.expiry.get(name)
        if not expiry or self.now is None:
            return frozenset()
        now = self.now
        return frozenset(p for p in node.verified if (t := expiry.get(p)) is not None and t <= now)

    def expiry_of(self, name: str, profile: str) -> datetime | None:
        """When the verdict for `profile` on node `name` expires (None: not known)."""
        return self.expiry.get(name, {}).get(profile)

    def void_nodes(self, satisfying: Sequence[str]) -> set[str]:
        """Nodes labelled with a satisfying profile that is void by now: the scheduler would
        still admit them (the affinity matches labels), so migrations are steered away."""
        out: set[str] = set()
        for profile in satisfying:
            for name in self.by_profile.get(profile, ()):
                if (t := self.expiry_of(name, profile)) is not None and self.now and t <= self.now:
                    out.add(name)
        return out


@dataclass(frozen=True)
class Observation:
    """Everything `reconcile` reads for one SecureVM."""

    svm: SecureVMView
    resolution: Resolution
    catalog: Mapping[str, ProfileCapabilities]
    nodes: NodeSnapshot
    vm: VMView | None = None
    vmi: VMIView | None = None
    migrations: Sequence[MigrationView] = ()
    """Migrations of this VMI (ours and anyone else's)."""
    vm_rejected: str | None = None
    """Why the apiserver refused to create the VM from this generation's template, if it did
    (retrying cannot help until the tenant changes the SecureVM)."""
    migration_refused: tuple[str, str] | None = None
    """(name, virt-api's message) of our last migration create refused at admission."""
    vm_owner: str | None = None
    """Another SecureVM that owns this SecureVM's VM (`World.owner_of`): this one only reports
    VirtualMachineConflict and never acts on the VM."""

    @property
    def costs(self) -> dict[str, int]:
        """Profile → cost, from the catalog."""
        return {name: p.cost for name, p in self.catalog.items()}


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class CreateVM:
    body: Json


@dataclass(frozen=True)
class PatchVM:
    """A JSON merge patch of the VirtualMachine."""

    name: str
    patch: Json


@dataclass(frozen=True)
class ReplaceVMSpec:
    """Replace the VirtualMachine's whole spec (the template is the whole truth), and annotate."""

    name: str
    spec: Json
    annotations: Mapping[str, str]


class SlotKind(StrEnum):
    SECURITY = "Security"
    MOVING_TARGET = "MovingTarget"


@dataclass(frozen=True)
class CreateMigration:
    """Create a migration (409 AlreadyExists means it exists: the name is deterministic).

    It carries what the executor and the slot accounting need, so nobody reads the body back:
    why it moves (`trigger`), from where (`source_node`, which holds an outbound slot until
    KubeVirt reports the migration) and which `attempt` of the relocation it is.
    """

    name: str
    vmi: str
    trigger: RelocationTrigger
    source_node: str
    attempt: int
    body: Json

    @property
    def slot(self) -> SlotKind:
        if self.trigger is RelocationTrigger.MOVING_TARGET_DEFENSE:
            return SlotKind.MOVING_TARGET
        return SlotKind.SECURITY


@dataclass(frozen=True)
class RestartVMI:
    """Delete the VMI (precondition: its uid), so KubeVirt starts a new one from the VM."""

    name: str
    uid: str


Action = CreateVM | PatchVM | ReplaceVMSpec | CreateMigration | RestartVMI


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class SlotRequest:
    """A migration this SecureVM warrants now, waiting for the fleet planner's grant."""

    kind: SlotKind
    source_node: str
    sensitivity: int
    since: datetime


# Measurements for metrics, emitted by the planner (which knows the semantics).


@dataclass(frozen=True)
class RelocationStarted:
    trigger: RelocationTrigger
    name: ClassVar[str] = "relocation_started"


@dataclass(frozen=True)
class RelocationFinished:
    trigger: RelocationTrigger
    result: RelocationResult
    seconds: float
    name: ClassVar[str] = "relocation_finished"


@dataclass(frozen=True)
class TimeToCompliance:
    """Non-compliance first seen → the VMI runs on a compliant node."""

    seconds: float
    name: ClassVar[str] = "time_to_compliance"


Signal = RelocationStarted | RelocationFinished | TimeToCompliance


@dataclass
class Plan:
    """What to do for one SecureVM: write `status` first (when `write_status`), then `actions`,
    then post `events`. The executor needs nothing else and decides nothing itself.

    `starved`: no compliant node for it now (the operator wakes it when a node gains a
    profile). `protected_by`: the verified profile that makes its node compliant, or None.
    """

    key: tuple[str, str]
    status: SecureVMStatus
    uid: str = ""
    write_status: bool = True
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    slot_request: SlotRequest | None = None
    signals: list[Signal] = field(default_factory=list)
    starved: bool = False
    protected_by: str | None = None

    @property
    def migrations(self) -> list[CreateMigration]:
        return [a for a in self.actions if isinstance(a, CreateMigration)]

    @property
    def creates_migration(self) -> bool:
        return bool(self.migrations)

    @property
    def settled(self) -> bool:
        """Compliant, and no migration wanted or started: nothing is being reacted to."""
        return self.protected_by is not None and self.slot_request is None and not self.migrations

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


# --------------------------------------------------------------------------------------------
# Names and bodies


def migration_name(vm: str, uid: str, seq: int, attempt: int, trigger: str) -> str:
    """`svm-<vm>-<hash>` ≤ 63 characters, unique per (SecureVM uid, relocation, attempt).

    A retry or a restarted operator computes the same name (409 AlreadyExists = done); a new
    relocation or a new attempt gets a new one, even if the VM returns to a node it left.
    """
    digest = hashlib.sha256(f"{uid}/{seq}/{attempt}/{trigger}".encode()).hexdigest()[:10]
    room = _MAX_NAME - len("svm--") - len(digest)
    stem = vm[:room].rstrip("-.")
    return f"svm-{stem}-{digest}"


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def with_affinity(template: Mapping[str, Any], affinity: Json) -> Json:
    """A VirtualMachineSpec with `spec.template.spec.affinity` replaced."""
    spec: Json = copy.deepcopy(dict(template))
    vmi_template = spec.setdefault("template", {})
    vmi_spec = vmi_template.setdefault("spec", {})
    vmi_spec["affinity"] = affinity
    return spec


def vm_body(svm: SecureVMView, template: Mapping[str, Any], affinity: Json) -> Json:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": svm.vm_name,
            "namespace": svm.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, SECUREVM_LABEL: svm.name},
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template)},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "SecureVM",
                    "name": svm.name,
                    "uid": svm.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": with_affinity(template, affinity),
    }


def migration_body(
    name: str, svm: SecureVMView, vmi: str, trigger: RelocationTrigger, selector: Mapping[str, str]
) -> Json:
    spec: Json = {"vmiName": vmi}
    if selector:
        spec["addedNodeSelector"] = dict(selector)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {
            "name": name,
            "namespace": svm.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                SECUREVM_LABEL: svm.name,
                TRIGGER_LABEL: str(trigger),
            },
        },
        "spec": spec,
    }


def migration_for(svm: SecureVMView, vmi: VMIView, rec: RelocationRecord) -> CreateMigration:
    """The migration a relocation record names: the same body whether it is created right
    after the record is written or again after a restart (409 AlreadyExists = done)."""
    selector = {HOSTNAME_LABEL: rec.steered_to} if rec.steered_to else {}
    name = rec.migration_name
    return CreateMigration(
        name=name,
        vmi=vmi.name,
        trigger=rec.trigger,
        source_node=vmi.node_name or "",
        attempt=rec.attempt,
        body=migration_body(name, svm, vmi.name, rec.trigger, selector),
    )


def same_affinity(a: Json | None, b: Json | None) -> bool:
    return (a or {}) == (b or {})


def status_body(status: SecureVMStatus) -> Json:
    """The status as written to the API (camelCase, unset fields omitted)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
