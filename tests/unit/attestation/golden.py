"""The policies and deterministic entropy shared by the golden-evidence recorder and the tests.

Pure (no TPM): the unit tier imports it; tests/node_agent/record_golden.py uses the same
definitions when it records from swtpm.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.attestation import platform

# PCRs 0, 4 and 7 after the simulated boot of a HyperWall node (the recorded node:
# sod_testbed.swtpm.boot_log("hyperwall")), spelled out so this module needs no TPM code;
# test_labels_and_wire checks they agree.
GOLDEN_PCRS: dict[int, str] = {
    0: "e69819c0ec31a3f18886aaac7ab47af21fb6c01bcaa50da4ef362de2c2bee581",
    4: "763893834b498b615d44f86c46fb4a20316d186c362dfdfc56fea084c4b51f7e",
    7: "5e3a17a286e76a8ab188a56b204ba3233bc4ecc500634931ffbba307d89aac30",
}


class SeededEntropy:
    """Deterministic `os.urandom` stand-in: SHA-256(seed ‖ counter), truncated."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
        return out[:n]


def policies() -> dict[str, AttestationPolicy | None]:
    """hyperwall (architecture + golden PCRs + memoryViolations ≤ 0), datasafe, tpm, none."""
    golden = [{"index": i, "values": [v]} for i, v in GOLDEN_PCRS.items()]
    return {
        "hyperwall": AttestationPolicy.model_validate(
            {
                "architecture": "hyperwall",
                "tpm": {"pcrBank": "SHA256", "pcrs": golden},
                "runtime": [{"counter": "memoryViolations", "max": 0}],
                "freshnessSeconds": 60,
            }
        ),
        "datasafe": AttestationPolicy.model_validate(
            {"architecture": "datasafe", "tpm": {"pcrs": golden}, "freshnessSeconds": 60}
        ),
        "tpm": AttestationPolicy.model_validate({"tpm": {"pcrs": golden}}),
        "no-policy": None,
    }


def enrollments(ek_certificate_der: bytes) -> dict[str, tuple[platform.Enrolled, ...]]:
    """The platform team's PlatformEnrollment of the recorded node's TPM: it is a HyperWall
    machine (so `hyperwall` can be verified on it, and `datasafe` cannot)."""
    fingerprint = platform.ek_fingerprint(x509.load_der_x509_certificate(ek_certificate_der))
    return platform.index([("node-1", "hyperwall", fingerprint)])
