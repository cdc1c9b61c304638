"""Scale (issue 7, item 3): 200 fake nodes and 1,000 -> 5,000 -> 20,000 SecureVMs: convergence,
operator CPU and RSS, and the cost of one node revocation as the fleet grows.
"""

from __future__ import annotations

from bench import deps
from bench.stats import Result

NAME = "scale"
TITLE = "Scale"

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
    raise NotImplementedError("the scale benchmark is not written yet")
