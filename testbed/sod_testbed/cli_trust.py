"""`sodctl sandbox break|heal`: make a sandbox node's attestation fail, and restore it.

    sodctl sandbox break hyperwall-1 --how violation   # memory violations above the threshold
    sodctl sandbox break hyperwall-1 --how pcr         # an unexpected measurement in PCR 4
    sodctl sandbox break hyperwall-1 --how bootloader  # an unexpected boot component, logged
    sodctl sandbox break datasafe-1 --how silence      # the node-agent stops; evidence goes stale
    sodctl sandbox heal hyperwall-1                    # undo all three (a PCR needs a reboot)

Both wait (up to `--timeout`) until the verifier has acted on the node's labels and print
its verdicts, unless `--no-wait`. Also the services `sodctl sandbox up` runs for the trust
monitor: a swtpm and a node-agent per node (`swtpm_and_node_agent`), then the verifier
(`verifier`, which waits until every node is enrolled).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sod_operator.api.constants import PROFILE_LABEL_PREFIX
from sod_operator.cli.errors import UsageError

from sod_testbed.cluster import (
    ClusterService,
    LocalCluster,
    NodeService,
    SandboxError,
    default_state_dir,
)
from sod_testbed.kubeapi import KubeApi, resource_path
from sod_testbed.nodes import NodeSpec
from sod_testbed.trust import HOW, TrustBed, TrustConfig, attach

NATT = "sod.dev/v1alpha1"
ENROLL_TIMEOUT = 90.0


def register_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `break` and `heal` to `sodctl sandbox`."""
    brk = actions.add_parser(
        "break",
        help="make a node's attestation fail (violation, pcr, bootloader or silence)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    brk.add_argument("node", help="a sandbox node, e.g. hyperwall-1")
    brk.add_argument("--how", choices=HOW, default="violation", help="default: violation")
    _wait_args(brk)
    brk.set_defaults(func=cmd_break)
    heal = actions.add_parser("heal", help="restore a node broken with `sandbox break`")
    heal.add_argument("node", help="a sandbox node, e.g. hyperwall-1")
    _wait_args(heal)
    heal.set_defaults(func=cmd_heal)


def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true", help="return without waiting")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the verifier"
    )


def add_up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument("--no-trust", action="store_true", help="no swtpm, node-agents or verifier")
    up.add_argument(
        "--agent-interval",
        type=float,
        default=TrustConfig().agent_interval,
        help="seconds between a node-agent's quotes (default %(default)s)",
    )
    up.add_argument(
        "--challenge-interval",
        type=float,
        default=None,
        help="seconds between the verifier's published nonces, which pace the agents' quotes "
        "(default: --agent-interval)",
    )


def _bed(args: argparse.Namespace) -> TrustBed:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    try:
        return attach(state_dir)
    except SandboxError as err:
        raise UsageError(str(err)) from None


def _trust_labels(api: KubeApi, node: str) -> set[str]:
    labels = api.get(resource_path("v1", "nodes", name=node))["metadata"].get("labels") or {}
    return {k[len(PROFILE_LABEL_PREFIX) :] for k in labels if k.startswith(PROFILE_LABEL_PREFIX)}


def _verdicts(api: KubeApi, node: str) -> list[dict[str, Any]]:
    att = api.get_or_none(resource_path(NATT, "nodeattestations", name=node)) or {}
    return list((att.get("status") or {}).get("verdicts") or [])


def _wait_labels(bed: TrustBed, node: str, fewer: bool, before: set[str], timeout: float) -> int:
    api = bed.cluster.api()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _trust_labels(api, node)
        if (now < before) if fewer else (now > before or (not before and now)):
            break
        time.sleep(0.2)
    else:
        print(f"{node}: no label change within {timeout:.0f}s")
        _print_verdicts(api, node, before)
        return 1
    after = _trust_labels(api, node)
    print(f"{node}: trust labels now {sorted(after) or 'none'}")
    _print_verdicts(api, node, before | after)
    return 0


def _print_verdicts(api: KubeApi, node: str, profiles: set[str]) -> None:
    """The verdicts of the profiles whose labels were involved (not all sixteen)."""
    for v in _verdicts(api, node):
        if v["profile"] in profiles:
            print(f"  {v['profile']:<20} {v['result']:<9} {v['reason']}: {v.get('message', '')}")


def cmd_break(args: argparse.Namespace) -> int:
    bed = _bed(args)
    try:
        bed.require_node(args.node)
        before = _trust_labels(bed.cluster.api(), args.node)
        print(bed.break_node(args.node, args.how))
    except SandboxError as err:
        raise UsageError(str(err)) from None
    if args.no_wait or not before:
        return 0
    return _wait_labels(bed, args.node, True, before, args.timeout)


def cmd_heal(args: argparse.Namespace) -> int:
    bed = _bed(args)
    try:
        bed.require_node(args.node)
        before = _trust_labels(bed.cluster.api(), args.node)
        for line in bed.heal_node(args.node):
            print(f"{args.node}: {line}")
    except SandboxError as err:
        raise UsageError(str(err)) from None
    if args.no_wait:
        return 0
    return _wait_labels(bed, args.node, False, before, args.timeout)


# ---- services for `sodctl sandbox up` ----------------------------------------------------------


def services(
    agent_interval: float, challenge_interval: float | None = None
) -> tuple[NodeService, ClusterService]:
    """(node service, cluster service) starting the trust monitor in a sandbox."""
    config = TrustConfig(agent_interval=agent_interval, challenge_interval=challenge_interval)

    def swtpm_and_node_agent(cluster: LocalCluster, node: NodeSpec) -> None:
        TrustBed(cluster, config).start_node(node)

    def verifier(cluster: LocalCluster) -> None:
        TrustBed(cluster, config).start_verifier()
        wait_enrolled(cluster, [n.name for n in cluster.nodes])

    return swtpm_and_node_agent, verifier


def wait_enrolled(cluster: LocalCluster, nodes: list[str], timeout: float = ENROLL_TIMEOUT) -> None:
    """Until every node's NodeAttestation says Enrolled=True (or raise SandboxError)."""
    api = cluster.api()
    deadline = time.monotonic() + timeout
    pending = set(nodes)
    while pending and time.monotonic() < deadline:
        for node in sorted(pending):
            att = api.get_or_none(resource_path(NATT, "nodeattestations", name=node)) or {}
            conditions = (att.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Enrolled" and c["status"] == "True" for c in conditions):
                pending.discard(node)
        time.sleep(0.2)
    if pending:
        raise SandboxError(
            f"nodes not enrolled by the verifier within {timeout:.0f}s: {sorted(pending)}; "
            f"see {cluster.log_dir}/verifier.log and agent-<node>.log"
        )
