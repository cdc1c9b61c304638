"""Which architecture a node's TPM is enrolled for: the platform team's word, not the node's.

Pure. The node's architecture claim is produced by software on the node; root there can
make it say anything. The EK is different: its certificate chains to the vendor CA and
credential activation bound the AK to it, so a node cannot present the EK of another machine.
`PlatformEnrollment` objects (the platform team's, read-only to everyone else) map EK
fingerprints to architectures; `architecture_finding` verifies a profile's `architecture`
only when the node both declares it and its EK is enrolled for exactly it.

The fingerprint is SHA-256 of the EK public key's DER SubjectPublicKeyInfo, so it does not
change when a certificate is re-issued and it is the same for RSA and ECC EKs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)

from sod_operator.api.v1alpha1.nodeattestation import AttestationReason

R = AttestationReason


@dataclass(frozen=True)
class Enrolled:
    """One PlatformEnrollment: the object's name and the architecture it enrolls the EK for."""

    name: str
    architecture: str


Enrollments = Mapping[str, tuple[Enrolled, ...]]
"""EK fingerprint → every PlatformEnrollment naming it."""


def ek_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of the certified EK public key, DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def ek_fingerprint_of(data: bytes) -> str:
    """The fingerprint of an EK given as its certificate or its public key, PEM or DER (what
    `tpm2_getekcertificate` or `tpm2_createek -f pem` write on the machine)."""
    for load_cert in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return ek_fingerprint(load_cert(data))
        except ValueError:
            pass
    for load_key in (load_pem_public_key, load_der_public_key):
        try:
            key = load_key(data)
        except (ValueError, TypeError):
            continue
        spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()
    raise ValueError("neither an X.509 certificate nor a public key, in PEM or DER")


def index(enrollments: Iterable[tuple[str, str, str]]) -> dict[str, tuple[Enrolled, ...]]:
    """(name, architecture, EK fingerprint) triples → the lookup `architecture_finding` uses."""
    out: dict[str, list[Enrolled]] = {}
    for name, architecture, fingerprint in enrollments:
        out.setdefault(fingerprint, []).append(Enrolled(name, architecture))
    return {fp: tuple(sorted(found, key=lambda e: e.name)) for fp, found in out.items()}


def architecture_finding(
    required: str, claimed: str | None, ek: str | None, enrollments: Enrollments
) -> tuple[AttestationReason, str] | None:
    """Why the node is not proven to be `required` (None: it is).

    A node that declares another architecture is simply not it (`ArchitectureMismatch`:
    believing a node that says it lacks something is safe). A node that declares `required`
    must also hold a TPM the platform team enrolled for `required`, and for nothing else: two
    enrollments that disagree prove neither (`ArchitectureNotEnrolled`).
    """
    if claimed != required:
        return (
            R.ARCHITECTURE_MISMATCH,
            f"architecture {required!r} required, the node declares {claimed!r}",
        )
    if ek is None:
        return (R.ARCHITECTURE_NOT_ENROLLED, f"architecture {required!r}: the node's EK is unknown")
    found = enrollments.get(ek, ())
    architectures = sorted({e.architecture for e in found})
    if architectures == [required]:
        return None
    where = (
        "is not enrolled for any architecture (no PlatformEnrollment names it)"
        if not found
        else "is enrolled for "
        + ", ".join(f"{e.architecture!r} (PlatformEnrollment {e.name})" for e in found)
        + (" — enrollments that disagree prove neither" if len(architectures) > 1 else "")
    )
    return (
        R.ARCHITECTURE_NOT_ENROLLED,
        f"the node declares architecture {required!r}, but its TPM's EK "
        f"(sha256:{ek}) {where}: an architecture is proven by the platform team's "
        "enrollment of the machine's EK, never by the node's own claim",
    )
