"""Registers the subcommands that talk to a cluster, and the test bed's when it is installed.

`explain` (placements) ships with the operator. `sandbox` (the local test bed) lives in the
separate `sod-testbed` distribution, installed from a checkout by `make venv`, never into the
operator image: it announces itself through the `sodctl.commands` entry point group. Without it,
`sodctl sandbox ...` says how to get it instead of failing on an import.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

from sod_operator.cli.errors import UsageError

PLUGIN_GROUP = "sodctl.commands"
TESTBED_MISSING = (
    "`sodctl sandbox` needs the test bed, which is not installed: from a clone of sod-operator run "
    "`make venv` (or `pip install -e testbed -e '.[dev]'`)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the cluster-facing subcommands that exist in this installation."""
    from sod_operator.cli import explain

    explain.register(sub)
    plugins = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    if "sandbox" in plugins:
        plugins["sandbox"].load()(sub)
    else:
        _register_missing_sandbox(sub)


def _register_missing_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sandbox", help="the local test bed (needs the sod-testbed package)")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_sandbox_missing)


def _sandbox_missing(args: argparse.Namespace) -> int:
    raise UsageError(TESTBED_MISSING)
