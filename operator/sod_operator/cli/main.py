"""Entry point of `sodctl` / `kubectl-sod`: one argparse tree, subcommands registered per module.

Every user error is a `UsageError` printed as one line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sod_operator.cli import eventlog, offline, platform
from sod_operator.cli.errors import UsageError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sodctl",
        description="Security on Demand for KubeVirt: inspect requests, profiles and placements.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    offline.register(sub)
    eventlog.register(sub)
    platform.register(sub)
    _register_optional(sub)
    return parser


def _register_optional(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Cluster-facing commands import the Kubernetes client; keep offline commands usable and fast.
    from sod_operator.cli import cluster_commands

    cluster_commands.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as err:
        # One line, whatever the input held (a name or value with a newline is shown escaped).
        text = str(err).replace("\r", "\\r").replace("\n", "\\n")
        print(f"sodctl: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sodctl ... | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
