"""TPM structures built in software, and the TPM's side of ActivateCredential, for tests.

`ecc_public` marshals a TPM2B_PUBLIC the way a TPM does (TPM 2.0 Part 2 §12.2); `activate`
recovers a MakeCredential credential with the EK's *private* key, as TPM2_ActivateCredential
does (Part 1 §24, Annex C.6.4). It derives the ECDH seed with `cryptography`'s concatenation
KDF (SP 800-56A), not with the verifier's `kdfe`, so it checks that code rather than echoing
it; tpm2-tools' `tpm2_makecredential` checks this helper in turn (tests/node_agent/test_ecc.py).
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from sod_operator.attestation import tpm

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

# TCG EK Credential Profile: policy A = PolicySecret(TPM_RH_ENDORSEMENT), SHA-256.
POLICY_A_SHA256 = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_ATTRIBUTES = (
    0x000300B2  # fixedTPM fixedParent sensitiveDataOrigin adminWithPolicy restricted decrypt
)
AK_ATTRIBUTES = (
    0x00050472  # fixedTPM fixedParent sensitiveDataOrigin userWithAuth noDA restricted sign
)
CURVE_IDS = {ec.SECP256R1.name: 0x0003, ec.SECP384R1.name: 0x0004}


def _b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def ecc_public(key: ec.EllipticCurvePublicKey, *, ek: bool) -> bytes:
    """TPM2B_PUBLIC of an ECC key: an EK (L-2 template shape) or an ECDSA-SHA256 AK."""
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    if ek:
        head = struct.pack(">HHI", tpm.Alg.ECC, tpm.Alg.SHA256, EK_ATTRIBUTES) + _b(POLICY_A_SHA256)
        params = struct.pack(">HHHH", tpm.Alg.AES, 128, tpm.Alg.CFB, tpm.Alg.NULL)
    else:
        head = struct.pack(">HHI", tpm.Alg.ECC, tpm.Alg.SHA256, AK_ATTRIBUTES) + _b(b"")
        params = struct.pack(">HHH", tpm.Alg.NULL, tpm.Alg.ECDSA, tpm.Alg.SHA256)
    params += struct.pack(">HH", CURVE_IDS[key.curve.name], tpm.Alg.NULL)
    unique = _b(numbers.x.to_bytes(size, "big")) + _b(numbers.y.to_bytes(size, "big"))
    return _b(head + params + unique)


def _kdfe_sha256(z: bytes, label: bytes, party_u: bytes, party_v: bytes) -> bytes:
    kdf = ConcatKDFHash(hashes.SHA256(), 32, otherinfo=label + b"\x00" + party_u + party_v)
    return kdf.derive(z)


class ActivationError(ValueError):
    """The credential was not made for this EK and Name (the TPM's TPM_RC_INTEGRITY)."""


def activate(
    ek_private: ec.EllipticCurvePrivateKey, name: bytes, blob: bytes, secret: bytes
) -> bytes:
    """TPM2_ActivateCredential for an ECC (SHA-256, AES-128-CFB) EK, in software."""
    size = (ek_private.curve.key_size + 7) // 8
    (x_len,) = struct.unpack(">H", secret[:2])
    e_x = secret[2 : 2 + x_len]
    e_y = secret[4 + x_len :]
    if (
        len(e_x) != size
        or len(e_y) != size
        or secret[2 + x_len : 4 + x_len] != struct.pack(">H", size)
    ):
        raise ActivationError("encrypted secret is not a TPMS_ECC_POINT of the EK's curve")
    q_e = ec.EllipticCurvePublicNumbers(
        int.from_bytes(e_x, "big"), int.from_bytes(e_y, "big"), ek_private.curve
    ).public_key()
    z = ek_private.exchange(ec.ECDH(), q_e)
    ek_x = ek_private.public_key().public_numbers().x.to_bytes(size, "big")
    seed = _kdfe_sha256(z, b"IDENTITY", e_x, ek_x)
    (hmac_len,) = struct.unpack(">H", blob[:2])
    outer = blob[2 : 2 + hmac_len]
    enc_identity = blob[2 + hmac_len :]
    hmac_key = tpm.kdfa(tpm.Alg.SHA256, seed, b"INTEGRITY", b"", b"", 256)
    if not hmac.compare_digest(outer, hmac.new(hmac_key, enc_identity + name, "sha256").digest()):
        raise ActivationError("integrity check failed")
    sym_key = tpm.kdfa(tpm.Alg.SHA256, seed, b"STORAGE", name, b"", 128)
    decryptor = Cipher(algorithms.AES(sym_key), CFB(b"\x00" * 16)).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    (length,) = struct.unpack(">H", plain[:2])
    return plain[2 : 2 + length]
