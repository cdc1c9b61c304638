"""`sodctl platform-enrollment`: the platform team's object for one machine, from its EK."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sod_operator.api.v1alpha1.platformenrollment import PlatformEnrollmentSpec
from sod_operator.cli.main import main as sodctl

from tests.unit.attestation.conftest import ENROLLMENTS, step

EK_DER = base64.b64decode(step("identity").spec["tpm"]["ekCertificate"])
[FINGERPRINT] = ENROLLMENTS  # what the verifier computes for the recorded node's EK


def _print(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert sodctl(list(argv)) == 0
    return yaml.safe_load(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_from_the_ek_certificate_or_public_key_in_pem_or_der(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = x509.load_der_x509_certificate(EK_DER)
    files = {
        "cert.der": EK_DER,
        "cert.pem": cert.public_bytes(Encoding.PEM),
        "ek.pem": cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "ek.der": cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        doc = _print(capsys, "platform-enrollment", "hw-7", str(tmp_path / name),
                     "--architecture", "hyperwall", "--description", "rack 3")  # fmt: skip
        assert doc["kind"] == "PlatformEnrollment"
        assert doc["metadata"] == {"name": "hw-7"}
        spec = PlatformEnrollmentSpec.model_validate(doc["spec"])
        assert (spec.architecture, spec.ek_public_key_sha256) == ("hyperwall", FINGERPRINT), name


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a key")
    assert sodctl(["platform-enrollment", "x", str(junk), "--architecture", "hyperwall"]) == 2
    assert "neither an X.509 certificate nor a public key" in capsys.readouterr().err
    (tmp_path / "ek.der").write_bytes(EK_DER)
    argv = ["platform-enrollment", "x", str(tmp_path / "ek.der"), "--architecture", "no way!"]
    assert sodctl(argv) == 2
    assert sodctl(["platform-enrollment", "x", str(tmp_path / "none"), "--architecture", "a"]) == 2
