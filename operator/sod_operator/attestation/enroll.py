"""Enrollment: binding a node's attestation key to its certified endorsement key.

The verifier makes a credential for the AK's Name and encrypts it to the EK (MakeCredential:
RSA-OAEP for an RSA EK, ECDH + KDFe for an ECC P-256 EK).
Only the TPM that holds the EK's private key *and* has an object with that Name loaded can
recover it (ActivateCredential), so a correct answer proves the AK lives in the certified TPM.
The verifier keeps no secret: status carries the blob and the SHA-256 of the credential.

Pure: randomness comes in through `entropy` (os.urandom in the verifier, seeded in tests).
Once enrolled, the EK certificate and AK Name are pinned: a node presenting another EK or
AK is rejected (`EkChanged`, `AkNotEnrolled`) until an administrator deletes its
NodeAttestation (the agent has no delete right, so it cannot re-enroll itself).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sod_operator.api.v1alpha1.nodeattestation import (
    AttestationReason,
    CredentialActivation,
    Enrollment,
    EnrollmentState,
)
from sod_operator.attestation import tpm
from sod_operator.attestation.verify import Failure, Identity

R = AttestationReason
CREDENTIAL_BYTES = 32

Entropy = Callable[[int], bytes]


@dataclass(frozen=True)
class EnrollmentStep:
    """The enrollment to store and, while not enrolled, why."""

    enrollment: Enrollment | None
    failure: Failure | None

    @property
    def enrolled(self) -> bool:
        return self.enrollment is not None and self.enrollment.state == EnrollmentState.ENROLLED


def _matches(enrollment: Enrollment, identity: Identity) -> bool:
    return (
        enrollment.ek_certificate_sha256 == identity.ek_certificate_sha256
        and enrollment.ak_name == identity.ak_name
    )


def challenge(identity: Identity, now: datetime, entropy: Entropy) -> Enrollment:
    """A fresh MakeCredential challenge for `identity`'s AK, encrypted to its EK."""
    credential = entropy(CREDENTIAL_BYTES)
    randomness = entropy(tpm.randomness_size(identity.ek))
    made = tpm.make_credential(identity.ek, identity.ak.name, credential, randomness)
    return Enrollment(
        state=EnrollmentState.CHALLENGED,
        ek_certificate_sha256=identity.ek_certificate_sha256,
        ak_name=identity.ak_name,
        credential_blob=base64.b64encode(made.credential_blob).decode(),
        encrypted_secret=base64.b64encode(made.encrypted_secret).decode(),
        credential_sha256=hashlib.sha256(credential).hexdigest(),
        challenged_time=now,
    )


def step(
    identity: Identity,
    current: Enrollment | None,
    activation: CredentialActivation | None,
    now: datetime,
    entropy: Entropy,
    ek_enrolled_by: str | None = None,
) -> EnrollmentStep:
    """Advance enrollment for a node presenting `identity` (idempotent).

    `ek_enrolled_by` names another node that already enrolled this EK certificate: one TPM
    cannot vouch for two nodes.
    """
    if current is not None and current.state == EnrollmentState.ENROLLED:
        # Pinned; whether the presented identity is the enrolled one is checked per quote.
        return EnrollmentStep(current, None)
    if ek_enrolled_by is not None:
        return EnrollmentStep(
            current,
            Failure.of(
                R.EK_ALREADY_ENROLLED,
                f"EK certificate sha256:{identity.ek_certificate_sha256[:16]}… is already "
                f"enrolled by node {ek_enrolled_by!r}",
            ),
        )
    if current is None or not _matches(current, identity):
        return EnrollmentStep(
            challenge(identity, now, entropy),
            Failure.of(
                R.AWAITING_ACTIVATION,
                "a credential was encrypted to the node's EK; waiting for the node to activate it",
                recoverable=True,
            ),
        )
    if activation is None:
        return EnrollmentStep(
            current,
            Failure.of(
                R.AWAITING_ACTIVATION,
                "waiting for the node to answer the credential-activation challenge",
                recoverable=True,
            ),
        )
    try:
        answer = base64.b64decode(activation.credential, validate=True)
    except ValueError:
        answer = b""
    expected = current.credential_sha256 or ""
    if not hmac.compare_digest(hashlib.sha256(answer).hexdigest(), expected):
        return EnrollmentStep(
            current,
            Failure.of(
                R.ACTIVATION_FAILED,
                "spec.tpm.activation.credential is not the credential encrypted to the EK: "
                "the AK does not live in the certified TPM (or the answer is for an older "
                "challenge)",
            ),
        )
    return EnrollmentStep(
        current.model_copy(
            update={
                "state": EnrollmentState.ENROLLED,
                "credential_blob": None,
                "encrypted_secret": None,
                "credential_sha256": None,
                "enrolled_time": now,
            }
        ),
        None,
    )
