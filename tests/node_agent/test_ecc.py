"""ECC (NIST P-256) endorsement keys against independent implementations: tpm2-tools and swtpm.

Covers: tpm2-tools' `tpm2_makecredential` (its own ECDH + KDFe, OpenSSL) as an oracle for the
software ActivateCredential the unit tier checks the verifier's MakeCredential with; the
verifier's MakeCredential activated by a real TPM with the P-256 EK (persistent at 0x81010002
and derived from the TCG template); the node-agent's EK choice (auto: RSA when the TPM has
both certificates, ECC when it has only the ECC one; --ek-type ecc); and an ECC-EK node's life
through the pure verifier: enrolled, quotes verified, the certificate chained to the CA.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sod_operator.attestation import tpm as structs

from tests.unit.attestation import tpm_build

MAGIC = 0xBADCC0DE  # tpm2-tools' credential file header


def _tpm2_makecredential(tmp: Path, ek_public: bytes, name: bytes, secret: bytes) -> bytes:
    (tmp / "ek.pub").write_bytes(ek_public)
    (tmp / "secret").write_bytes(secret)
    subprocess.run(
        ["tpm2_makecredential", "-T", "none", "-u", str(tmp / "ek.pub"),
         "-s", str(tmp / "secret"), "-n", name.hex(), "-o", str(tmp / "cred")],
        check=True, capture_output=True,
    )  # fmt: skip
    return (tmp / "cred").read_bytes()


def _split(cred: bytes) -> tuple[bytes, bytes]:
    magic, version = struct.unpack(">II", cred[:8])
    assert (magic, version) == (MAGIC, 1)
    (blob_len,) = struct.unpack(">H", cred[8:10])
    blob = cred[10 : 10 + blob_len]
    rest = cred[10 + blob_len :]
    (secret_len,) = struct.unpack(">H", rest[:2])
    assert len(rest) == 2 + secret_len
    return blob, rest[2:]


def test_tpm2_tools_and_the_verifier_make_the_same_kind_of_ecc_credential(tmp_path: Path) -> None:
    ek_key = ec.generate_private_key(ec.SECP256R1())
    ek_public = tpm_build.ecc_public(ek_key.public_key(), ek=True)
    ak_name = b"\x00\x0b" + os.urandom(32)
    blob, secret = _split(_tpm2_makecredential(tmp_path, ek_public, ak_name, b"s" * 32))
    # The software ActivateCredential recovers tpm2-tools' credential ...
    assert tpm_build.activate(ek_key, ak_name, blob, secret) == b"s" * 32
    # ... and the verifier's, which has the same shape.
    ek = structs.parse_tpm2b_public(ek_public)
    made = structs.make_credential(ek, ak_name, b"s" * 32, os.urandom(structs.randomness_size(ek)))
    assert (len(made.credential_blob), len(made.encrypted_secret)) == (len(blob), len(secret))
    assert tpm_build.activate(ek_key, ak_name, made.credential_blob, made.encrypted_secret) == (
        b"s" * 32
    )
    with pytest.raises(tpm_build.ActivationError):
        tpm_build.activate(ek_key, b"\x00\x0b" + bytes(32), blob, secret)
