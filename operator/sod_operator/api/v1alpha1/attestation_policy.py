"""`ServerSecurityProfile.spec.attestation`: what a node must prove, freshly, to carry a profile.

Every check here is evaluated by the verifier (`sod_operator.attestation`) against evidence
that is bound to a TPM quote over the verifier's nonce: the declared architecture, golden PCR
values, CPU flags, kernel module parameters and runtime counters. A profile without a policy
is never verified on any node (fail closed).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from sod_operator.api.v1alpha1.base import UNIQUE_SET, ApiModel, unique_map

# A lower-case name as the node-agent reports it (architecture names, CPU flags, counters).
FactName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
]
ModuleParameterName = Annotated[
    str,
    Field(
        min_length=3,
        max_length=127,
        pattern=r"^[a-z0-9_]+\.[A-Za-z0-9_]+$",
        description="`<module>.<parameter>`, e.g. `kvm_amd.sev_snp`.",
    ),
]
ModuleParameterValue = Annotated[str, Field(max_length=63)]
PcrIndex = Annotated[int, Field(ge=0, le=23)]
HexDigest = Annotated[str, Field(min_length=40, max_length=128, pattern=r"^([0-9a-f]{2})+$")]
CounterValue = Annotated[int, Field(ge=0, le=2**53)]

_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def _map(*keys: str) -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class PcrBank(StrEnum):
    """A TPM PCR bank (the hash algorithm the PCRs are extended with)."""

    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"


PCR_DIGEST_SIZE: dict[PcrBank, int] = {PcrBank.SHA256: 32, PcrBank.SHA384: 48, PcrBank.SHA512: 64}
"""Digest size in bytes of each bank; golden values must have exactly this length."""


def _hex_size_by_bank_cel() -> str:
    """CEL for the hex length of a digest in `self.pcrBank`, from PCR_DIGEST_SIZE (the CRD
    rules mirror the models' validators with the same table)."""
    *first, last = PCR_DIGEST_SIZE.items()
    expr = str(last[1] * 2)
    for bank, size in reversed(first):
        expr = f"self.pcrBank == '{bank}' ? {size * 2} : {expr}"
    return f"({expr})"


class GoldenPcr(ApiModel):
    """The values one PCR may hold on a node that has this architecture."""

    index: PcrIndex
    """The PCR index (0-23). It must be covered by the node's quote."""
    values: Annotated[
        list[HexDigest],
        Field(min_length=1, max_length=16, json_schema_extra=_SET),
        UNIQUE_SET,
    ]
    """Accepted values as lower-case hex digests of the policy's bank. More than one value
    allows a rollout (old and new firmware) without a window where no node verifies."""


class TpmPolicy(ApiModel):
    """Golden PCR values the node's TPM quote must show."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": (
                        f"self.pcrs.all(p, p.values.all(v, size(v) == {_hex_size_by_bank_cel()}))"
                    ),
                    "message": "every golden value must be a hex digest of `pcrBank`'s size",
                    "reason": "FieldValueInvalid",
                    "fieldPath": ".pcrs",
                },
            ]
        }
    }

    pcr_bank: PcrBank = PcrBank.SHA256
    """The PCR bank the quote must be taken over."""
    pcrs: Annotated[
        list[GoldenPcr], Field(min_length=1, max_length=24, json_schema_extra=_map("index"))
    ]
    """The PCRs the quote must cover, each with its accepted values. A value outside the list
    (an unexpected measurement) revokes the profile on the node."""

    @model_validator(mode="after")
    def _check(self) -> TpmPolicy:
        seen: set[int] = set()
        size = PCR_DIGEST_SIZE[self.pcr_bank] * 2
        for i, pcr in enumerate(self.pcrs):
            if pcr.index in seen:
                raise ValueError(f"pcrs[{i}].index: PCR {pcr.index} appears more than once")
            seen.add(pcr.index)
            for j, value in enumerate(pcr.values):
                if len(value) != size:
                    raise ValueError(
                        f"pcrs[{i}].values[{j}]: must be {size} hex digits "
                        f"(a {self.pcr_bank} digest), got {len(value)}"
                    )
        return self


EventTypeName = Annotated[
    str,
    Field(
        min_length=4,
        max_length=48,
        pattern=r"^(EV_[A-Z0-9_]+|0x[0-9a-f]{8})$",
    ),
]
VariableName = Annotated[
    str,
    Field(
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]*$",
    ),
]


class EventReference(ApiModel):
    """The digests one kind of boot event may have: one entry of a reference state."""

    pcr: PcrIndex
    """The PCR the event is extended into."""
    event_type: EventTypeName
    """The TCG event type as `tpm2_eventlog` names it (`0x` and 8 hex digits for an unnamed
    one), e.g. `EV_EFI_BOOT_SERVICES_APPLICATION` (boot loader, kernel),
    `EV_IPL` (grub's commands and files), `EV_EFI_VARIABLE_DRIVER_CONFIG` (Secure Boot state,
    PK, KEK, db, dbx), `EV_SEPARATOR`, `EV_EFI_ACTION`."""
    variable: VariableName = ""
    """For `EV_EFI_VARIABLE_*` events: the variable (`SecureBoot`, `PK`, `KEK`, `db`, `dbx`,
    `BootOrder`, …) this entry is for. Empty: every event of the type in this PCR that no
    variable-specific entry names."""
    digests: Annotated[
        list[HexDigest],
        Field(min_length=1, max_length=256, json_schema_extra=_SET),
        UNIQUE_SET,
    ]
    """Accepted digests (lower-case hex, in the policy's bank). More than one: several boot
    loaders, kernels or dbx versions are accepted at once (a rollout)."""


def _unique_references(items: list[EventReference]) -> list[EventReference]:
    seen: dict[tuple[int, str, str], int] = {}
    for i, ref in enumerate(items):
        key = (ref.pcr, ref.event_type, ref.variable)
        if key in seen:
            raise ValueError(
                f"references[{i}]: PCR {ref.pcr} {ref.event_type} {ref.variable!r} "
                f"duplicates references[{seen[key]}]"
            )
        seen[key] = i
    return items


class MeasuredBootPolicy(ApiModel):
    """A reference state for the node's boot event log (made by `sodctl reference-state`).

    The verifier replays the node's TCG event log in `pcrBank` and refuses it unless it
    reproduces the quoted value of every PCR in `pcrs` (and of every other quoted PCR it
    extends). Then every event extended into one of `pcrs` must match a reference — same PCR,
    event type and (for UEFI variables) variable — whose digests include the event's digest:
    an event without one (a new boot component, an unknown boot loader or kernel, a changed
    db/dbx) revokes the profile with a reason naming the event. Which events occur and how
    often is not constrained beyond that: a replayed log cannot hide an event, and an unknown
    one cannot pass.
    """

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!has(self.references) || self.references.all(r, r.digests.all(d, "
                        f"size(d) == {_hex_size_by_bank_cel()}))"
                    ),
                    "message": "every reference digest must be a hex digest of `pcrBank`'s size",
                    "reason": "FieldValueInvalid",
                    "fieldPath": ".references",
                },
            ]
        }
    }

    pcr_bank: PcrBank = PcrBank.SHA256
    """The bank the log is evaluated in; the quote must be over the same bank."""
    pcrs: Annotated[
        list[PcrIndex], Field(min_length=1, max_length=24, json_schema_extra=_SET), UNIQUE_SET
    ]
    """The PCRs whose every event must match a reference (e.g. 0, 2, 4 and 7: firmware,
    option ROMs, boot loaders and kernel, Secure Boot). The quote must cover them."""
    require_secure_boot: bool = False
    """The log must show the `SecureBoot` variable measured as enabled in PCR 7 (PCR 7 is then
    checked against the quote too)."""
    references: Annotated[
        list[EventReference],
        Field(max_length=128, json_schema_extra=_map("pcr", "eventType", "variable")),
        AfterValidator(_unique_references),
    ] = []
    """The allowed events."""

    @model_validator(mode="after")
    def _check(self) -> MeasuredBootPolicy:
        size = PCR_DIGEST_SIZE[self.pcr_bank] * 2
        for i, ref in enumerate(self.references):
            for j, value in enumerate(ref.digests):
                if len(value) != size:
                    raise ValueError(
                        f"references[{i}].digests[{j}]: must be {size} hex digits "
                        f"(a {self.pcr_bank} digest), got {len(value)}"
                    )
        return self


class ModuleParameterRequirement(ApiModel):
    """A kernel module parameter the node must report with a given value."""

    name: ModuleParameterName
    """`<module>.<parameter>` as under /sys/module, e.g. `kvm_amd.sev_snp`."""
    value: ModuleParameterValue
    """The required value, e.g. `Y` or `1`."""


class RuntimeCounterLimit(ApiModel):
    """An upper bound on a runtime trust-evidence counter (e.g. HyperWall's memory violations)."""

    counter: FactName
    """The counter's name as the node-agent reports it, e.g. `memoryViolations`. A node that
    does not report the counter fails the check."""
    max: CounterValue
    """The largest accepted value; anything above revokes the profile on the node."""


class AttestationPolicy(ApiModel):
    """Evidence a node must present, freshly, for the verifier to vouch for this profile.

    The node's TPM quote (signed by an attestation key bound to an EK whose certificate chains
    to the verifier's CA bundle, over the verifier's current nonce) is always required; the
    fields below add what this architecture must show on top.
    """

    architecture: FactName | None = None
    """The architecture the node's evidence must declare (e.g. `hyperwall`). Unset: any."""
    tpm: TpmPolicy | None = None
    """Golden final PCR values. Unset: the quote must be valid, but no PCR value is checked."""
    measured_boot: MeasuredBootPolicy | None = None
    """A measured-boot policy over the node's boot event log (each event checked against a
    reference state), which survives firmware and kernel updates that golden final values
    do not. Unset: the event log is not required."""
    cpu_flags: Annotated[
        list[FactName], Field(max_length=32, json_schema_extra=_SET), UNIQUE_SET
    ] = []
    """CPU flags (as in /proc/cpuinfo, e.g. `sev_snp`, `tdx_guest`) the node must report."""
    module_parameters: Annotated[
        list[ModuleParameterRequirement],
        Field(max_length=16, json_schema_extra=_map("name")),
        unique_map("name"),
    ] = []
    """Kernel module parameters the node must report, e.g. `kvm_amd.sev_snp=Y`."""
    runtime: Annotated[
        list[RuntimeCounterLimit],
        Field(max_length=16, json_schema_extra=_map("counter")),
        unique_map("counter"),
    ] = []
    """Runtime counters and their upper bounds (e.g. `memoryViolations` at most 0)."""
    freshness_seconds: Annotated[int, Field(ge=5, le=86_400)] = 60
    """Evidence older than this revokes the profile on the node (fail closed). The age is
    measured from when the verifier issued the nonce the evidence answers."""
