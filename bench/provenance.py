"""Which commit a result comes from, and whether the tree was clean (issue 15, item 5).

A figure is only worth citing if it can be reproduced by checking out one commit and running
`make bench`: every result file records the full commit hash and whether the working tree had
changes. The benchmark's own outputs (the result files and BENCHMARKS.md) do not count as
changes: a run rewrites them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("bench/results/", "BENCHMARKS.md")
"""Paths a benchmark run writes: changed or new files there leave the tree clean."""


@dataclass(frozen=True)
class Provenance:
    commit: str
    """Full hash of HEAD ("" outside a git checkout)."""
    changes: tuple[str, ...]
    """`git status --porcelain` lines outside OUTPUTS: uncommitted code the figures depend on."""

    @property
    def clean(self) -> bool:
        return bool(self.commit) and not self.changes


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
    )
    return out.stdout if out.returncode == 0 else ""


def changed_paths(porcelain: str) -> tuple[str, ...]:
    """The porcelain lines whose path is not a benchmark output."""
    lines = [line for line in porcelain.splitlines() if line.strip()]
    return tuple(line for line in lines if not line[3:].strip('"').startswith(OUTPUTS))


def current() -> Provenance:
    commit = _git("rev-parse", "HEAD").strip()
    porcelain = _git("status", "--porcelain", "--untracked-files=all")
    return Provenance(commit=commit, changes=changed_paths(porcelain))
