"""Attestation (issue 7, item 5): quote + verify latency per node on swtpm, and the verifier's
throughput in nodes per second with 8 and 32 concurrent agents.
"""

from __future__ import annotations

from bench import deps
from bench.stats import Result

NAME = "attestation"
TITLE = "Attestation"

REQUIRED = (
    "sod_node_agent.tpm",
    "sod_node_agent.evidence",
    "sod_operator.attestation.verify",
    "sod_operator.verifier",
    "sod_operator.sandbox.swtpm",
)


def missing() -> str | None:
    return deps.reason(REQUIRED, binaries=("swtpm", "swtpm_setup"))


def run(quick: bool = False) -> Result:
    raise NotImplementedError("the attestation benchmark is not written yet")
