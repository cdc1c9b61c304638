"""`PlatformEnrollment`: the platform team's record that a TPM sits in a machine of one
security architecture.

A node's architecture claim is its own word: software on the node produces it, and root on
the node can make it say anything (the quote only proves the claim was not changed *after*
the TPM signed it). What a node cannot forge is which TPM it holds: the EK is certified by
the TPM vendor's CA and bound to the AK by credential activation. So the platform team, which
knows what hardware it racked, enrolls each machine's EK for the machine's architecture, and
the verifier verifies a profile that names an `architecture` only on a node whose enrolled EK
is enrolled for exactly that architecture (`ArchitectureNotEnrolled` otherwise).

Cluster-scoped, written only by the platform team (cluster admins): the chart grants no role
any write on it, the verifier only reads it, and nothing is aggregated into `view`/`edit`/
`admin`. One object per machine (name it after the machine or its asset tag), so GitOps
adds and removes machines without editing a shared list.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sod_operator.api.v1alpha1.attestation_policy import FactName
from sod_operator.api.v1alpha1.base import ApiModel, ShortText

EkFingerprint = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class PlatformEnrollmentSpec(ApiModel):
    """One machine's TPM, enrolled for the machine's security architecture."""

    architecture: FactName
    """The machine's security architecture as profiles name it in
    `spec.attestation.architecture` (e.g. `hyperwall`; `plain` for none)."""
    ek_public_key_sha256: EkFingerprint
    """SHA-256 (lower-case hex) of the TPM's endorsement public key in DER
    SubjectPublicKeyInfo form, recorded at provisioning from the machine itself or from the
    vendor's delivery records: `openssl x509 -in ek.pem -pubkey -noout | openssl pkey -pubin
    -outform der | sha256sum`; `sodctl platform-enrollment` prints the whole object."""
    description: ShortText | None = None
    """Free text for people (e.g. rack position, asset tag)."""
