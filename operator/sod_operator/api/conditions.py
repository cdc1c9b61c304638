"""Condition types and reasons of `SecureVM`, and `set_condition` with apimachinery semantics.

Types and reasons are persisted on the wire: defined once here and pinned by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class ConditionType(StrEnum):
    READY = "Ready"
    """Summary: the VM runs on a node that satisfies its request."""
    COMPLIANT = "Compliant"
    """The VM's current node satisfies the request."""
    PENDING = "Pending"
    """Some profile satisfies the request, but the VM is not yet placed on a compliant node."""
    UNSATISFIABLE = "Unsatisfiable"
    """No profile in the catalog satisfies the request."""
    RELOCATING = "Relocating"
    """A relocation (live migration or restart) is in progress."""
    RELOCATION_FAILED = "RelocationFailed"
    """The last relocation attempt failed; it is retried with back-off."""
    NON_MIGRATABLE = "NonMigratable"
    """The VM cannot be live-migrated (e.g. a confidential VM)."""


class Reason(StrEnum):
    """CamelCase reasons of the conditions above (also used as Event reasons)."""

    # Compliant / Ready
    COMPLIANT_NODE = "CompliantNode"
    NODE_NOT_COMPLIANT = "NodeNotCompliant"
    """The VM was found on a node that never satisfied it (e.g. an adopted VM)."""
    TRUST_REVOKED = "TrustRevoked"
    """The node lost the verified profile that made it compliant."""
    TRUST_EXPIRED = "TrustExpired"
    """The verdict proving the node's profile expired unrenewed (label or not): void."""
    REQUEST_RAISED = "RequestRaised"
    """The request changed and the node no longer satisfies it."""
    PROFILE_CHANGED = "ProfileChanged"
    """A profile changed and the node no longer satisfies the request."""
    NOT_RUNNING = "NotRunning"
    # Pending
    NO_COMPLIANT_NODE = "NoCompliantNode"
    NO_REACHABLE_NODE = "NoReachableCompliantNode"
    """Compliant nodes exist, but none the VM can live-migrate to (e.g. a host-model CPU VM
    and only nodes of another CPU model or vendor): no doomed migration is created."""
    WAITING_FOR_SCHEDULING = "WaitingForScheduling"
    WAITING_FOR_AFFINITY = "WaitingForAffinityPropagation"
    PLACED = "Placed"
    # Unsatisfiable
    NO_SATISFYING_PROFILE = "NoSatisfyingProfile"
    LAUNCH_SECURITY_MISMATCH = "LaunchSecurityMismatch"
    VM_SETTINGS_MISSING = "VMSettingsMissing"
    SATISFIABLE = "Satisfiable"
    INVALID_REQUEST = "InvalidRequest"
    PACKAGE_NOT_FOUND = "PackageNotFound"
    # Relocating
    MIGRATING = "Migrating"
    RESTARTING = "Restarting"
    WAITING_FOR_MIGRATION_SLOT = "WaitingForMigrationSlot"
    WAITING_FOR_OTHER_MIGRATION = "WaitingForOtherMigration"
    RETRY_BACKOFF = "RetryBackoff"
    RELOCATION_REQUIRES_RESTART = "RelocationRequiresRestart"
    MOVING_TARGET_DEFENSE = "MovingTargetDefense"
    IDLE = "Idle"
    # RelocationFailed
    MIGRATION_FAILED = "MigrationFailed"
    MIGRATION_REFUSED = "MigrationRefused"
    """virt-api refused to admit the migration (e.g. the VMI is not running, not live-migratable,
    or another migration is in flight): backed off like a failed attempt, never re-sent."""
    NO_FAILURE = "NoFailure"
    # NonMigratable
    LIVE_MIGRATABLE = "LiveMigratable"
    NOT_LIVE_MIGRATABLE = "NotLiveMigratable"
    # Fail-closed
    FAIL_CLOSED_STOPPED = "FailClosedStopped"
    FAIL_CLOSED_ALERT = "FailClosedDeadlineExceeded"
    # VM reference
    VM_NOT_FOUND = "VirtualMachineNotFound"
    VM_CONFLICT = "VirtualMachineConflict"
    VM_REJECTED = "VirtualMachineRejected"
    """The apiserver refused the VirtualMachine made from `spec.template` (KubeVirt's schema)."""
    UNKNOWN = "Unknown"
    """Not evaluated yet (conditions are set on first visit, as Unknown)."""


class EventType(StrEnum):
    """A Kubernetes Event's `type` (the operator's and the verifier's Events alike)."""

    NORMAL = "Normal"
    WARNING = "Warning"


class EventReason(StrEnum):
    """Reasons of Events for actions (decisions on conditions use `Reason`)."""

    VM_CREATED = "VirtualMachineCreated"
    VM_UPDATED = "VirtualMachineUpdated"
    VM_ADOPTED = "VirtualMachineAdopted"
    AFFINITY_UPDATED = "AffinityUpdated"
    MIGRATION_CREATED = "MigrationCreated"
    MIGRATION_SUCCEEDED = "MigrationSucceeded"
    MIGRATION_FAILED = "MigrationFailed"
    MIGRATION_VANISHED = "MigrationVanished"
    """The recorded migration went with its VMI (the instance was replaced): abandoned."""
    RESTARTED = "RestartedForRelocation"
    RESTARTED_PENDING = "RestartedToApplyAffinity"
    STOPPED = "FailClosedStopped"
    RESTORED = "FailClosedRestored"
    DEADLINE_EXCEEDED = "FailClosedDeadlineExceeded"


@dataclass(frozen=True)
class ConditionState:
    """A condition as the pure core handles it (the wire model is `v1alpha1.base.Condition`)."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int | None
    last_transition_time: datetime


def set_condition(
    conditions: list[ConditionState], new: ConditionState
) -> tuple[list[ConditionState], bool]:
    """Set `new` in `conditions` like apimachinery's `meta.SetStatusCondition`.

    `lastTransitionTime` changes only when `status` changes; reason, message and
    observedGeneration update in place. Returns the new list and whether anything changed,
    so callers patch status only on change (no write storms).
    """
    for i, old in enumerate(conditions):
        if old.type != new.type:
            continue
        updated = replace(
            new,
            last_transition_time=(
                old.last_transition_time if old.status == new.status else new.last_transition_time
            ),
        )
        if updated == old:
            return conditions, False
        return [*conditions[:i], updated, *conditions[i + 1 :]], True
    return [*conditions, new], True
