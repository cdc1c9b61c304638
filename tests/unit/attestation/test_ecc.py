"""ECC (NIST P-256) endorsement keys on the verifier side, with no TPM.

Covers: KDFe against `cryptography`'s SP 800-56A concatenation KDF; MakeCredential for an
ECC EK recovered by a software ActivateCredential holding the EK private key (and refused
for another AK Name or another EK); the randomness a challenge draws; identity checks of an
ECC EK certified by a CA (accepted), and the mismatches refused with reasons naming the key
types: an ECC EK public with an RSA EK certificate, an RSA-certified golden node presenting
an ECC EK, a P-384 EK, an ECDSA signature claimed for an RSA key. The real TPM side and the
tpm2-tools cross-check are in tests/node_agent/test_ecc.py.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.api.v1alpha1.nodeattestation import CredentialActivation, TpmEvidence
from sod_operator.attestation import enroll, tpm
from sod_operator.attestation.ekcert import CaBundle
from sod_operator.attestation.verify import Failure, Identity, check_identity

from tests.unit.attestation import tpm_build
from tests.unit.attestation.conftest import BUNDLE, step
from tests.unit.attestation.golden import SeededEntropy

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test EK root"))
        .issuer_name(_name("test EK root"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _ek_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("unknown"))
        .issuer_name(ca[1].subject)
        .public_key(key)
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(ca[0], hashes.SHA384())
    )
    return cert.public_bytes(Encoding.DER)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class EccNode:
    """A software TPM identity: ECC P-256 EK (certified by a test CA) and ECDSA AK."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self.ca = _ca()
        self.bundle = CaBundle.from_pem(self.ca[1].public_bytes(Encoding.PEM))
        self.ek = ec.generate_private_key(curve or ec.SECP256R1())
        self.ak = ec.generate_private_key(ec.SECP256R1())
        self.ek_public = tpm_build.ecc_public(self.ek.public_key(), ek=True)
        self.ak_public = tpm_build.ecc_public(self.ak.public_key(), ek=False)

    def evidence(self, cert: bytes | None = None) -> TpmEvidence:
        return TpmEvidence(
            ek_certificate=_b64(cert or _ek_cert(self.ca, self.ek.public_key())),
            ek_public=_b64(self.ek_public),
            ak_public=_b64(self.ak_public),
        )


# --------------------------------------------------------------------------- crypto pieces


@pytest.mark.parametrize("bits", [128, 256, 384, 520])
def test_kdfe_is_the_sp800_56a_concatenation_kdf(bits: int) -> None:
    z, u, v = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    other = b"IDENTITY\x00" + u + v
    expected = ConcatKDFHash(hashes.SHA256(), (bits + 7) // 8, otherinfo=other).derive(z)
    assert tpm.kdfe(tpm.Alg.SHA256, z, b"IDENTITY", u, v, bits) == expected


def test_ecc_make_credential_is_recovered_by_the_ek_private_key() -> None:
    node = EccNode()
    ek = tpm.parse_tpm2b_public(node.ek_public)
    ak = tpm.parse_tpm2b_public(node.ak_public)
    entropy = SeededEntropy(b"ecc")
    made = tpm.make_credential(ek, ak.name, b"c" * 32, entropy(tpm.randomness_size(ek)))
    assert len(made.encrypted_secret) == 2 + 32 + 2 + 32  # TPMS_ECC_POINT of the ephemeral key
    assert tpm_build.activate(node.ek, ak.name, made.credential_blob, made.encrypted_secret) == (
        b"c" * 32
    )
    other_name = b"\x00\x0b" + bytes(32)
    with pytest.raises(tpm_build.ActivationError, match="integrity"):
        tpm_build.activate(node.ek, other_name, made.credential_blob, made.encrypted_secret)
    with pytest.raises(tpm_build.ActivationError, match="integrity"):
        tpm_build.activate(EccNode().ek, ak.name, made.credential_blob, made.encrypted_secret)


def test_each_challenge_uses_a_fresh_ephemeral_key() -> None:
    ek = tpm.parse_tpm2b_public(EccNode().ek_public)
    assert tpm.randomness_size(ek) == 40  # 32-byte scalar + 64 bits against modulo bias
    one = tpm.make_credential(ek, b"\x00\x0b" + bytes(32), b"c", bytes(40))
    two = tpm.make_credential(ek, b"\x00\x0b" + bytes(32), b"c", b"\x01" * 40)
    assert one.encrypted_secret != two.encrypted_secret
    with pytest.raises(ValueError, match="randomness must be 40 bytes"):
        tpm.make_credential(ek, b"\x00\x0b" + bytes(32), b"c", bytes(32))


# --------------------------------------------------------------------------- identity


def test_a_certified_ecc_ek_is_accepted_and_challenged() -> None:
    node = EccNode()
    identity = check_identity(node.evidence(), node.bundle, NOW)
    assert isinstance(identity, Identity)
    assert tpm.key_kind(identity.ek) == "ECC secp256r1"
    result = enroll.step(identity, None, None, NOW, SeededEntropy(b"enroll"))
    assert result.enrollment is not None
    assert result.enrollment.encrypted_secret is not None
    answer = tpm_build.activate(
        node.ek,
        identity.ak.name,
        base64.b64decode(result.enrollment.credential_blob or ""),
        base64.b64decode(result.enrollment.encrypted_secret),
    )
    done = enroll.step(
        identity,
        result.enrollment,
        CredentialActivation(credential=_b64(answer)),
        NOW,
        SeededEntropy(b"unused"),
    )
    assert done.enrolled, done.failure


def test_ecc_ek_public_with_an_rsa_ek_certificate_names_both_key_types() -> None:
    golden = step("identity").spec["tpm"]
    node = EccNode()
    evidence = node.evidence(base64.b64decode(golden["ekCertificate"]))
    failure = check_identity(evidence, BUNDLE, step("identity").now)
    assert isinstance(failure, Failure)
    assert failure.reason == R.EK_PUBLIC_MISMATCH
    assert "certificate holds an RSA-2048 key, the EK public is ECC secp256r1" in failure.message


def test_rsa_ek_public_with_an_ecc_ek_certificate_is_refused() -> None:
    golden = step("identity").spec["tpm"]
    node = EccNode()
    evidence = node.evidence().model_copy(update={"ek_public": golden["ekPublic"]})
    failure = check_identity(evidence, node.bundle, NOW)
    assert isinstance(failure, Failure)
    assert failure.reason == R.EK_PUBLIC_MISMATCH
    assert "certificate holds an ECC secp256r1 key, the EK public is RSA-2048" in failure.message


def test_another_ecc_key_than_the_certified_one_is_refused() -> None:
    node = EccNode()
    cert = _ek_cert(node.ca, ec.generate_private_key(ec.SECP256R1()).public_key())
    failure = check_identity(node.evidence(cert), node.bundle, NOW)
    assert isinstance(failure, Failure)
    assert failure.reason == R.EK_PUBLIC_MISMATCH
    assert "both are ECC secp256r1 keys, but different ones" in failure.message


def test_a_p384_ek_is_unsupported() -> None:
    node = EccNode(ec.SECP384R1())
    failure = check_identity(node.evidence(), node.bundle, NOW)
    assert isinstance(failure, Failure)
    assert failure.reason == R.EK_UNSUPPORTED
    assert "secp384r1 is not supported for EKs (NIST P-256 is)" in failure.message


def test_an_ecdsa_signature_claimed_for_an_rsa_key_is_refused() -> None:
    rsa_ek = tpm.parse_tpm2b_public(base64.b64decode(step("identity").spec["tpm"]["ekPublic"]))
    ecdsa = tpm.Signature(tpm.Alg.ECDSA, tpm.Alg.SHA256, b"\x30\x00")
    problem = tpm.signature_problem(rsa_ek, ecdsa, b"attest")
    assert problem is not None
    assert "differs from the key's fixed scheme" in problem
    # An RSA key whose public area claims ECDSA: the scheme matches, the key type cannot.
    forged = replace(rsa_ek, scheme=tpm.Alg.ECDSA, scheme_hash=tpm.Alg.SHA256)
    problem = tpm.signature_problem(forged, ecdsa, b"attest")
    assert problem == "signature algorithm 0x0018 does not fit the key type"
