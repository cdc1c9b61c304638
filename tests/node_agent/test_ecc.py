"""ECC (NIST P-256) endorsement keys against independent implementations: tpm2-tools and swtpm.

Covers: tpm2-tools' `tpm2_makecredential` (its own ECDH + KDFe, OpenSSL) as an oracle for the
software ActivateCredential the unit tier checks the verifier's MakeCredential with; the
verifier's MakeCredential activated by a real TPM with the P-256 EK (persistent at 0x81010002
and derived from the TCG template); the node-agent's EK choice (auto: RSA when the TPM has
both certificates, ECC when it has only the ECC one; --ek-type ecc); and an ECC-EK node's life
through the pure verifier: enrolled, quotes verified, the certificate chained to the CA.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sod_node_agent import facts
from sod_node_agent import tpm as agent_tpm
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.attestation import ekcert
from sod_operator.attestation import tpm as structs
from sod_operator.attestation.ekcert import CaBundle
from sod_testbed import swtpm
from tpm2_pytss import ESAPI, ESYS_TR, TPM2_HANDLE

from tests.node_agent.test_swtpm import _life
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


# --------------------------------------------------------------------------- on swtpm


@pytest.fixture(scope="module")
def ecc_manufactured(tmp_path_factory: pytest.TempPathFactory, local_ca: swtpm.LocalCa) -> Path:
    state = tmp_path_factory.mktemp("ecc") / "state"
    swtpm.manufacture(state, local_ca, ek="ecc")
    return state


@pytest.fixture(scope="module")
def both_manufactured(tmp_path_factory: pytest.TempPathFactory, local_ca: swtpm.LocalCa) -> Path:
    state = tmp_path_factory.mktemp("both") / "state"
    swtpm.manufacture(state, local_ca, ek="both")
    return state


@pytest.fixture
def ecc_tpm(ecc_manufactured: Path, start_tpm: Callable[[Path], swtpm.Swtpm]) -> swtpm.Swtpm:
    return start_tpm(ecc_manufactured)


@pytest.fixture
def both_tpm(both_manufactured: Path, start_tpm: Callable[[Path], swtpm.Swtpm]) -> swtpm.Swtpm:
    return start_tpm(both_manufactured)


def _certified_ek_kind(ident: agent_tpm.Identity) -> str:
    ek = structs.parse_tpm2b_public(ident.ek_public)
    cert = ekcert.parse_certificate(ident.ek_certificate)
    assert ekcert.key_mismatch(cert, ek.public_key) is None
    return structs.key_kind(ek)


def test_an_ecc_only_tpm_gives_its_p256_ek_and_certificate(
    ecc_tpm: swtpm.Swtpm, local_ca: swtpm.LocalCa
) -> None:
    with agent_tpm.session(ecc_tpm.tcti) as s:
        assert s.ek_kind.name == "ecc"
        ident = s.identity()
    cert = ekcert.parse_certificate(ident.ek_certificate)
    bundle = CaBundle.from_pem(local_ca.bundle_pem())
    assert ekcert.chain_problem(cert, bundle, datetime.now(UTC)) is None
    ek = structs.parse_tpm2b_public(ident.ek_public)
    assert structs.key_kind(ek) == "ECC secp256r1"
    assert ekcert.key_mismatch(cert, ek.public_key) is None
    assert structs.ek_problem(ek) is None
    missing = "no RSA EK certificate in NV index 0x01c00002"
    with (
        pytest.raises(agent_tpm.TpmError, match=missing),
        agent_tpm.session(ecc_tpm.tcti, ek_type="rsa") as s,
    ):
        s.identity()


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "derived"])
def test_the_tpm_activates_the_verifiers_ecc_credential(
    ecc_tpm: swtpm.Swtpm, persistent: bool
) -> None:
    if not persistent:  # a TPM whose EK is not persistent: derived from the L-2 template
        with ESAPI(ecc_tpm.tcti) as ectx:
            handle = ectx.tr_from_tpmpublic(TPM2_HANDLE(swtpm.ECC_EK_HANDLE))
            ectx.evict_control(ESYS_TR.OWNER, handle, TPM2_HANDLE(swtpm.ECC_EK_HANDLE))
    with agent_tpm.session(ecc_tpm.tcti) as s:
        ident = s.identity()
        ek = structs.parse_tpm2b_public(ident.ek_public)
        ak = structs.parse_tpm2b_public(ident.ak_public)
        cert = ekcert.parse_certificate(ident.ek_certificate)
        assert ekcert.key_mismatch(cert, ek.public_key) is None
        randomness = os.urandom(structs.randomness_size(ek))
        made = structs.make_credential(ek, ak.name, b"c" * 32, randomness)
        assert s.activate(made.credential_blob, made.encrypted_secret) == b"c" * 32
        other = structs.make_credential(ek, b"\x00\x0b" + bytes(32), b"c" * 32, randomness)
        with pytest.raises(agent_tpm.TpmError, match="ActivateCredential failed"):
            s.activate(other.credential_blob, other.encrypted_secret)


def test_auto_prefers_rsa_when_the_tpm_has_both(both_tpm: swtpm.Swtpm) -> None:
    with agent_tpm.session(both_tpm.tcti) as s:
        assert _certified_ek_kind(s.identity()) == "RSA-2048"
    with agent_tpm.session(both_tpm.tcti, ek_type="ecc") as s:
        assert _certified_ek_kind(s.identity()) == "ECC secp256r1"


def test_an_ecc_ek_node_enrolls_and_stays_verified(
    ecc_tpm: swtpm.Swtpm, local_ca: swtpm.LocalCa, tmp_path: Path
) -> None:
    sim_path = tmp_path / "sim.json"
    facts.SimulatedState("hyperwall", {"memoryViolations": 0}).write(sim_path)
    life = _life(ecc_tpm.tcti, local_ca, facts.FactSources(simulated=sim_path))
    att = life.att
    assert [o.evidence_reason for o in life.outs] == [R.AWAITING_ACTIVATION] + [R.VERIFIED] * 3
    assert att.status.verified_profiles == ["hyperwall", "tpm"]
    assert att.spec.tpm is not None
    ek = structs.parse_tpm2b_public(base64.b64decode(att.spec.tpm.ek_public))
    assert structs.key_kind(ek) == "ECC secp256r1"
    assert structs.parse_signature(base64.b64decode(att.spec.tpm.quote.signature)).alg == (  # type: ignore[union-attr]
        structs.Alg.ECDSA
    )
