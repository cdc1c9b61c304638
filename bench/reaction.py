"""Reaction latency (issue 7, item 1): node label removed -> VMIM created, and SecureVM request
raised -> VMIM created, on the sandbox, against the operator in periodic-resync mode.
"""

from __future__ import annotations

from bench import deps
from bench.stats import Result

NAME = "reaction"
TITLE = "Reaction latency"

REQUIRED = (
    "sod_operator.handlers",
    "sod_operator.main",
    "sod_operator.adapters",
    "sod_operator.sandbox.cluster",
    "sod_operator.sandbox.kubevirt",
)


def missing() -> str | None:
    return deps.reason(REQUIRED, testbed=True)


def run(quick: bool = False) -> Result:
    raise NotImplementedError("the reaction benchmark is not written yet")
