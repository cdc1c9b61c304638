"""`SecureVM`: a tenant's VM together with the security it must have for its whole life."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, model_validator

from sod_operator.api.constants import MAX_SECUREVM_NAME
from sod_operator.api.v1alpha1.base import (
    CONDITIONS_LIST,
    ApiModel,
    Condition,
    DNS1123Name,
    Generation,
    LocalObjectReference,
    Message,
    ShortText,
    with_cel_rules,
)
from sod_operator.api.v1alpha1.security import MatrixRow, SecurityRequestSpec
from sod_operator.api.vocabulary import Cell, Entity, Property, Scope

Seconds = Annotated[int, Field(ge=0, le=31_536_000)]

SECUREVM_NAME_MESSAGE = (
    f"a SecureVM name must be at most {MAX_SECUREVM_NAME} characters: it names the VM and is "
    "the value of its `sod.dev/securevm` label"
)
"""Why a longer SecureVM name is refused (CRD rule on `metadata.name`, mirrored offline)."""


class FailClosedAction(StrEnum):
    ALERT = "Alert"
    """Keep the VM running; report it (condition, Event, metric)."""
    STOP = "Stop"
    """Stop the VM (runStrategy Halted) until a compliant node can run it."""


class FailClosedPolicy(ApiModel):
    """What happens when the VM stays on a non-compliant node past a deadline."""

    action: FailClosedAction = FailClosedAction.ALERT
    """`Alert` reports and keeps the VM running; `Stop` halts it."""
    deadline_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300
    """How long the VM may run non-compliant before `action` is taken."""


class RelocationPolicy(ApiModel):
    """How the VM is moved when its node stops satisfying its request."""

    restart_allowed: bool = False
    """Whether a VM that cannot be live-migrated (e.g. a confidential SEV/SNP/TDX VM) may be
    relocated by a restart on a compliant node. When false such a VM is only flagged."""
    fail_closed: FailClosedPolicy | None = None
    """What to do when the VM stays non-compliant too long. Default: `Alert` after 300 s."""


class MovingTargetDefense(ApiModel):
    """Move the VM now and then so attackers cannot co-locate with it (paper, Section III-E)."""

    model_config = with_cel_rules(
        {
            "rule": ("!has(self.jitterSeconds) || self.jitterSeconds <= self.intervalSeconds"),
            "message": "`jitterSeconds` must not exceed `intervalSeconds`",
            "reason": "FieldValueInvalid",
            "fieldPath": ".jitterSeconds",
        }
    )

    interval_seconds: Annotated[int, Field(ge=60, le=31_536_000)]
    """Mean time between moves."""
    jitter_seconds: Seconds = 0
    """Random spread around the interval, so moves are not predictable."""

    @model_validator(mode="after")
    def _jitter_within_interval(self) -> MovingTargetDefense:
        # Mirrors the CEL rule above, so offline tools (sodctl) reject what the apiserver rejects.
        if self.jitter_seconds > self.interval_seconds:
            raise ValueError(
                f"jitterSeconds: {self.jitter_seconds} exceeds intervalSeconds "
                f"({self.interval_seconds}); the jitter must not exceed the interval"
            )
        return self


class SecureVMSpec(ApiModel):
    """A VM and the entities its confidentiality and integrity must be protected from."""

    model_config = with_cel_rules(
        {
            "rule": "has(self.template) != has(self.vmRef)",
            "message": "set exactly one of `template` or `vmRef`",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": (
                "has(self.vmRef) == has(oldSelf.vmRef) && "
                "(!has(self.vmRef) || self.vmRef.name == oldSelf.vmRef.name)"
            ),
            "message": "`vmRef` is immutable: create a new SecureVM to adopt another VM",
            "reason": "FieldValueForbidden",
            "fieldPath": ".vmRef",
        },
    )

    security: SecurityRequestSpec
    """What the VM must be protected from."""
    template: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    )
    """A KubeVirt `VirtualMachineSpec` (validated by KubeVirt's own schema when the operator
    creates the VirtualMachine named like this SecureVM)."""
    vm_ref: LocalObjectReference | None = None
    """Adopt an existing VirtualMachine in the same namespace instead of creating one."""
    relocation: RelocationPolicy | None = None
    """How the VM is relocated when its node stops satisfying the request."""
    moving_target_defense: MovingTargetDefense | None = None
    """Optional periodic relocation (moving target defense)."""

    @model_validator(mode="after")
    def _template_or_vm_ref(self) -> SecureVMSpec:
        # Mirrors the first CEL rule above (the `vmRef` transition rule needs the old object).
        if (self.template is None) == (self.vm_ref is None):
            raise ValueError("set exactly one of `template` or `vmRef`")
        return self


class UnmetCell(ApiModel):
    """A requested (entity, property) cell a profile does not protect."""

    entity: Entity
    """The attacking entity."""
    property: Property
    """The property requested."""
    offered: Cell
    """What the profile offers for it: No or NotApplicable."""


class ProfileGap(ApiModel):
    """Why one profile does not satisfy the request."""

    profile: DNS1123Name
    """The ServerSecurityProfile."""
    cells: Annotated[list[UnmetCell], Field(max_length=14)] | None = None
    """Requested cells the profile does not protect."""
    scope: Scope | None = None
    """Set when the profile's scope does not cover the requested scope: the profile's scope."""


class ResolvedRequest(ApiModel):
    """The request as a Table II row, after options or a package are expanded."""

    matrix: Annotated[list[MatrixRow], Field(max_length=7)]
    """Per entity, the properties to protect."""
    scope: Scope
    """What of the VM must be protected."""
    package: DNS1123Name | None = None
    """The SecurityPackage the request came from, if any."""


class RelocationTrigger(StrEnum):
    TRUST_REVOKED = "TrustRevoked"
    """The node lost the verified profile that made it compliant."""
    TRUST_EXPIRED = "TrustExpired"
    """The verdict proving the node's profile expired (no verifier renewed it), even though the
    profile's label may still be on the node: the profile is void (fail closed)."""
    REQUEST_RAISED = "RequestRaised"
    """The SecureVM's request changed so that the node no longer satisfies it."""
    PROFILE_CHANGED = "ProfileChanged"
    """A ServerSecurityProfile changed so that the node no longer satisfies the request."""
    NODE_NOT_COMPLIANT = "NodeNotCompliant"
    """The VM was found on a node that never satisfied it (e.g. an adopted VM)."""
    MOVING_TARGET_DEFENSE = "MovingTargetDefense"
    """A periodic move (moving target defense); never overlaps a security relocation."""


class RelocationResult(StrEnum):
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ABANDONED = "Abandoned"


class RelocationRecord(ApiModel):
    """One relocation of the VM (bounded history in status)."""

    trigger: RelocationTrigger
    """Why the VM was moved: TrustRevoked, RequestRaised, ProfileChanged, NodeNotCompliant or
    MovingTargetDefense."""
    from_node: ShortText = ""
    """Node the VM ran on."""
    to_node: ShortText = ""
    """Node the VM runs on afterwards (empty until known)."""
    migration_name: ShortText = ""
    """The VirtualMachineInstanceMigration (empty for a restart)."""
    attempt: Annotated[int, Field(ge=0, le=1000)] = 0
    """Attempt number of this relocation (1 for the first; retries after failures count up)."""
    avoid_nodes: Annotated[list[ShortText], Field(max_length=16)] | None = None
    """Targets of failed attempts of this relocation: retries are steered to other nodes."""
    steered_to: ShortText = ""
    """The node this attempt was steered to (`addedNodeSelector`); empty when the scheduler
    chose among all compliant nodes."""
    start_time: datetime
    """When the relocation was started."""
    end_time: datetime | None = None
    """When it ended."""
    result: RelocationResult = RelocationResult.IN_PROGRESS
    """InProgress, Succeeded, Failed or Abandoned."""
    message: Message = ""
    """Details, e.g. the failure reported by KubeVirt."""
    vmi_uid: ShortText = ""
    """The VirtualMachineInstance the migration was made for. A migration never outlives its
    VMI (virt-controller deletes a deleted VMI's migrations), so a record for another instance
    is abandoned, never created again."""


class PlacementClass(ApiModel):
    """Profiles needing the same VM settings, and those settings as rendered into the VM."""

    profiles: Annotated[list[DNS1123Name], Field(max_length=256)]
    """The satisfying profiles of the chosen class; the VM's affinity admits only these."""
    vm_settings: ShortText
    """The settings rendered into the VM, e.g. `launchSecurity.snp`."""


class SecureVMStatus(ApiModel):
    """Observed state of a SecureVM, written by the operator only."""

    observed_generation: Generation | None = None
    """The `.metadata.generation` this status was computed for."""
    vm_name: ShortText | None = None
    """The managed KubeVirt VirtualMachine."""
    request: ResolvedRequest | None = None
    """The resolved Security Request Matrix (Table II row) and scope."""
    satisfying_profiles: Annotated[list[DNS1123Name], Field(max_length=256)] | None = None
    """Profiles that satisfy the request, sorted."""
    placement_class: PlacementClass | None = None
    """The class of satisfying profiles the VM is placed on, when they need different VM
    settings (docs/OPERATOR.md, "Confidential profiles")."""
    unmet: Annotated[list[ProfileGap], Field(max_length=256)] | None = None
    """For each profile that does not satisfy the request, what it lacks."""
    eligible_nodes: Annotated[int, Field(ge=0, le=100_000)] | None = None
    """Number of nodes with a verified satisfying profile."""
    node_name: ShortText | None = None
    """The node the VM's instance runs on."""
    node_profile: ShortText | None = None
    """The verified profile that makes the current node compliant."""
    non_compliant_since: datetime | None = None
    """When the VM was first seen on a non-compliant node (cleared when compliant)."""
    relocation: RelocationRecord | None = None
    """The relocation in progress, recorded before the migration is created (so a restarted
    operator finds the migration it may already have created)."""
    relocation_count: Annotated[int, Field(ge=0, le=2**31)] | None = None
    """Number of relocations started so far. Part of each migration's name, so a new relocation
    never reuses the name of an old, finished migration."""
    history: Annotated[list[RelocationRecord], Field(max_length=16)] | None = None
    """The most recent relocations, newest last."""
    next_moving_target_time: datetime | None = None
    """When moving target defense moves the VM next."""
    conditions: (
        Annotated[list[Condition], Field(max_length=16, json_schema_extra=CONDITIONS_LIST)] | None
    ) = None
    """Standard conditions: Ready, Compliant, Pending, Unsatisfiable, Relocating,
    RelocationFailed, NonMigratable."""
