"""Registers the subcommands that talk to a cluster or run the sandbox.

Each module adds its own subcommand here: `sandbox` (the local test bed), `explain` (placements).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the cluster-facing subcommands that exist in this build."""
    from sod_operator.cli import explain, sandbox

    sandbox.register(sub)
    explain.register(sub)
