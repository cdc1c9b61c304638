"""Incident fan-out (issue 7, item 2): a node holding 50 SecureVMs is revoked; time until all
migrations are planned, created within the concurrency budget, and completed.
"""

from __future__ import annotations

from bench import deps
from bench.stats import Result

NAME = "fanout"
TITLE = "Incident fan-out"

REQUIRED = (
    "sod_operator.handlers",
    "sod_operator.main",
    "sod_operator.adapters",
    "sod_operator.sandbox.cluster",
    "sod_operator.sandbox.kubevirt_sim",
)


def missing() -> str | None:
    return deps.reason(REQUIRED, testbed=True)


def run(quick: bool = False) -> Result:
    raise NotImplementedError("the fan-out benchmark is not written yet")
