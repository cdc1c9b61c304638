"""`ServerSecurityProfile`: one security architecture, a row of Table III."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from sod_operator.api.constants import MAX_PROFILE_NAME
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.base import (
    CONDITIONS_LIST,
    ApiModel,
    Condition,
    Generation,
    ShortText,
    unique_map,
)
from sod_operator.api.vocabulary import Cell, Entity, Scope

PROFILE_NAME_MESSAGE = (
    f"a ServerSecurityProfile name must be at most {MAX_PROFILE_NAME} characters: "
    "it becomes the node label `sod.node-restriction.kubernetes.io/profile.<name>`"
)
"""Why a longer profile name is refused (CRD rule on `metadata.name`, mirrored offline)."""


class Protection(ApiModel):
    """What the architecture protects against one attacking entity (a Table III cell pair)."""

    entity: Entity
    """The attacking entity (a Table III column)."""
    confidentiality: Cell
    """Whether confidentiality is protected from the entity: Yes, No or NotApplicable."""
    integrity: Cell
    """Whether integrity is protected from the entity: Yes, No or NotApplicable."""
    note: ShortText = ""
    """Why the cell is what it is (e.g. NoHype's `No*`: it removes the hypervisor at runtime)."""


class LaunchSecurity(StrEnum):
    """A confidential-VM technology, named as KubeVirt's `spec.domain.launchSecurity` member
    (kubevirt.io/api core/v1 `LaunchSecurity`), so a profile maps onto the VM one to one."""

    SEV = "sev"
    SNP = "snp"
    TDX = "tdx"


class FirmwareRequirements(ApiModel):
    """Firmware the VM must boot with (KubeVirt `spec.domain.firmware.bootloader.efi`)."""

    efi: bool = False
    """The VM boots UEFI firmware (SEV, SNP and TDX guests need it)."""
    secure_boot: bool = False
    """UEFI Secure Boot is on (implies `efi`)."""


class VMRequirements(ApiModel):
    """What the VM itself must carry for the profile's protections to hold.

    The node's architecture protects only VMs launched to use it: an ordinary VM on an SEV-SNP
    node has no protection from the hypervisor. The operator renders these settings into the
    VM it places on the profile, and reports a running instance without them non-compliant.
    """

    launch_security: LaunchSecurity | None = None
    """The launchSecurity member the VM must be launched with, if any."""
    firmware: FirmwareRequirements | None = None
    """Firmware settings the VM must boot with, if any."""


class ServerSecurityProfileSpec(ApiModel):
    """The protections of one security architecture, as its architects claim them (Table III).

    An entity missing from `protections` is treated as `No` for both properties: only `Yes`
    protects.
    """

    description: ShortText = ""
    """A one-line description of the architecture."""
    reference: ShortText = ""
    """Where the cells come from (publication or vendor documentation)."""
    protections: Annotated[
        list[Protection],
        Field(
            max_length=7,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["entity"],
            },
        ),
        unique_map("entity"),
    ]
    """Per attacking entity, whether confidentiality and integrity are protected."""
    scope: Scope
    """What of a VM the architecture protects (Table III, last column)."""
    cost: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    """Relative cost of a node of this class. Placement prefers the cheapest sufficient class,
    so premium secure servers are not used up by VMs that need less."""
    vm_requirements: VMRequirements | None = None
    """What the VM must carry for the protections above to hold (e.g. `launchSecurity: snp`).
    Without it the protections hold for any VM on a node of this profile."""
    attestation: AttestationPolicy | None = None
    """How the verifier proves a node has this architecture. A profile without a policy is
    never verified on any node."""


class ServerSecurityProfileStatus(ApiModel):
    """Observed state of a profile, written by the operator."""

    observed_generation: Generation | None = None
    """The generation this status was computed for."""
    verified_nodes: Annotated[int, Field(ge=0, le=100_000)] | None = None
    """Number of nodes on which the verifier currently verifies this profile."""
    conditions: (
        Annotated[list[Condition], Field(max_length=16, json_schema_extra=CONDITIONS_LIST)] | None
    ) = None
    """Standard conditions."""
