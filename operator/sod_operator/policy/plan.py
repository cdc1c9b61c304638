"""The planner's inputs and outputs: what one SecureVM's world looks like, and the plan.

Inputs are value objects over the operator's in-memory indexes (no copies of the cluster);
outputs are actions the adapters execute in order, after writing the planned status.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from sod_operator.api.constants import (
    API_VERSION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SECUREVM_LABEL,
)
from sod_operator.api.v1alpha1.parsing import ManifestError, parse_model
from sod_operator.api.v1alpha1.securevm import RelocationTrigger, SecureVMSpec, SecureVMStatus
from sod_operator.policy.evaluation import Resolution
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.observed import (
    TEMPLATE_HASH_ANNOTATION,
    TRIGGER_LABEL,
    MigrationView,
    VMIView,
    VMView,
    parse_time,
)
from sod_operator.policy.placement import (
    NO_CONSTRAINTS,
    LauncherConstraints,
    NodeView,
    term_matches,
)

Json = dict[str, Any]
_MAX_NAME = 63


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class SecureVMView:
    """A SecureVM as the planner sees it. `spec` is None when it failed to parse."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: SecureVMSpec | None
    status: SecureVMStatus
    spec_error: str = ""
    created: datetime | None = None
    """metadata.creationTimestamp: which of several SecureVMs claiming one VM owns it."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def vm_name(self) -> str:
        if self.spec is not None and self.spec.vm_ref is not None:
            return self.spec.vm_ref.name
        return self.name


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
        out = []
        for name in names:
            node = self.nodes.get(name)
            if node is None or not node.schedulable or not launcher.admits(node):
                continue
            if tenant_terms and not any(term_matches(t, node.labels, name) for t in tenant_terms):
                continue
            out.append(name)
        out.sort()
        if cacheable:
            # One snapshot serves one planning batch: VMs with the same request share the answer.
            self._eligible[cache_key] = tuple(out)
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
    vm_owner: str | None = None
    """Another SecureVM that owns this SecureVM's VM (`World.owner_of`): this one only reports
    VirtualMachineConflict and never acts on the VM."""


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


@dataclass(frozen=True)
class CreateMigration:
    name: str
    vmi: str
    body: Json


@dataclass(frozen=True)
class RestartVMI:
    """Delete the VMI (precondition: its uid), so KubeVirt starts a new one from the VM."""

    name: str
    uid: str


Action = CreateVM | PatchVM | ReplaceVMSpec | CreateMigration | RestartVMI


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


class SlotKind(StrEnum):
    SECURITY = "Security"
    MOVING_TARGET = "MovingTarget"


@dataclass(frozen=True)
class SlotRequest:
    """A migration this SecureVM warrants now, waiting for the fleet planner's grant."""

    kind: SlotKind
    source_node: str
    sensitivity: int
    since: datetime


@dataclass(frozen=True)
class Signal:
    """A measurement for metrics, emitted by the planner (which knows the semantics)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    seconds: float | None = None


@dataclass
class Plan:
    """What to do for one SecureVM: write `status` first (when changed), then `actions`."""

    key: tuple[str, str]
    status: SecureVMStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    slot_request: SlotRequest | None = None
    signals: list[Signal] = field(default_factory=list)

    @property
    def creates_migration(self) -> bool:
        return any(isinstance(a, CreateMigration) for a in self.actions)

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


def same_affinity(a: Json | None, b: Json | None) -> bool:
    return (a or {}) == (b or {})


def securevm_from_body(body: Mapping[str, Any]) -> SecureVMView:
    """Parse a SecureVM object; a spec that does not parse becomes `spec=None` with the error."""
    meta = body.get("metadata") or {}
    spec: SecureVMSpec | None
    try:
        spec = parse_model(SecureVMSpec, body.get("spec"), "spec")
        error = ""
    except ManifestError as err:
        spec, error = None, str(err)
    try:
        status = SecureVMStatus.model_validate(body.get("status") or {}, by_alias=True)
    except ValidationError:
        status = SecureVMStatus()  # a status we cannot read is recomputed from scratch
    return SecureVMView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        spec=spec,
        status=status,
        spec_error=error,
        created=parse_time(meta.get("creationTimestamp")),
    )


def status_body(status: SecureVMStatus) -> Json:
    """The status as written to the API (camelCase, unset fields omitted)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
