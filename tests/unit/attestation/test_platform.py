"""A node's architecture is not its own word (issue 19 item 3), on the recorded swtpm evidence.

The recorded node's agent declares `hyperwall` in a genuine quote. Whether the verifier
believes it depends only on the platform team's PlatformEnrollments of the node's EK.
"""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.attestation import platform

from tests.unit.attestation.conftest import ENROLLMENTS, Step, run, step, verdict

EK_DER = base64.b64decode(step("identity").spec["tpm"]["ekCertificate"])
EK = platform.ek_fingerprint(x509.load_der_x509_certificate(EK_DER))


def test_the_fingerprint_is_sha256_of_the_ek_public_key_spki() -> None:
    import hashlib

    spki = (
        x509.load_der_x509_certificate(EK_DER)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    assert hashlib.sha256(spki).hexdigest() == EK
    assert {EK: (platform.Enrolled("node-1", "hyperwall"),)} == ENROLLMENTS


def test_an_enrolled_machine_declaring_its_architecture_is_verified(good: Step) -> None:
    out = run(good.attestation(), good.now)
    assert verdict(out, "hyperwall") == ("Verified", R.VERIFIED)


def test_a_plain_machine_claiming_hyperwall_is_not_verified(good: Step) -> None:
    """The attack of issue 19: a genuine quote, a genuine TPM, the claim `hyperwall` — and the
    platform team enrolled this TPM's machine as `plain`."""
    plain = platform.index([("plain-1", "plain", EK)])
    out = run(good.attestation(), good.now, enrollments=plain)
    assert verdict(out, "hyperwall") == ("Rejected", R.ARCHITECTURE_NOT_ENROLLED)
    message = next(v.message for v in out.status.verdicts if v.profile == "hyperwall")
    assert f"sha256:{EK}" in message
    assert "is enrolled for 'plain' (PlatformEnrollment plain-1)" in message
    assert "never by the node's own claim" in message
    assert verdict(out, "tpm") == ("Verified", R.VERIFIED)  # no architecture: the quote holds
    assert out.label_patch == {"sod.node-restriction.kubernetes.io/profile.tpm": "verified"}


def test_an_unenrolled_machine_is_verified_for_no_architecture(good: Step) -> None:
    out = run(good.attestation(), good.now, enrollments={})
    assert verdict(out, "hyperwall") == ("Rejected", R.ARCHITECTURE_NOT_ENROLLED)
    message = next(v.message for v in out.status.verdicts if v.profile == "hyperwall")
    assert "is not enrolled for any architecture (no PlatformEnrollment names it)" in message


def test_enrollments_that_disagree_prove_neither(good: Step) -> None:
    both = platform.index([("a", "hyperwall", EK), ("b", "datasafe", EK)])
    out = run(good.attestation(), good.now, enrollments=both)
    assert verdict(out, "hyperwall") == ("Rejected", R.ARCHITECTURE_NOT_ENROLLED)
    message = next(v.message for v in out.status.verdicts if v.profile == "hyperwall")
    assert "'hyperwall' (PlatformEnrollment a), 'datasafe' (PlatformEnrollment b)" in message
    assert "prove neither" in message


def test_enrollment_never_replaces_the_claim(good: Step) -> None:
    """Enrolled for datasafe, the node declares hyperwall: neither is verified (a node saying
    it lacks an architecture is believed; one saying it has one must be enrolled for it)."""
    datasafe = platform.index([("node-1", "datasafe", EK)])
    out = run(good.attestation(), good.now, enrollments=datasafe)
    assert verdict(out, "hyperwall") == ("Rejected", R.ARCHITECTURE_NOT_ENROLLED)
    assert verdict(out, "datasafe") == ("Rejected", R.ARCHITECTURE_MISMATCH)


def test_other_findings_are_reported_with_it() -> None:
    s = step("violation")
    out = run(s.attestation(), s.now, enrollments={})
    message = next(v.message for v in out.status.verdicts if v.profile == "hyperwall")
    assert "not enrolled" in message
    assert "memoryViolations=3" in message


def test_unknown_ek_fails_closed() -> None:
    found = platform.architecture_finding("hyperwall", "hyperwall", None, ENROLLMENTS)
    assert found is not None
    assert found[0] == R.ARCHITECTURE_NOT_ENROLLED
    assert platform.architecture_finding("hyperwall", "hyperwall", EK, ENROLLMENTS) is None
