"""`sodctl sandbox up|down|status|kubeconfig`: the local test bed for people.

sodctl sandbox up --nodes hyperwall=2,datasafe=1,plain=1
kubectl --kubeconfig "$(sodctl sandbox kubeconfig)" get nodes
sodctl sandbox down

`up` starts the same `LocalCluster` the e2e harness uses (with real KubeVirt virt-api and
virt-controller), the virt-handler player as a process, the trust monitor, installs the example
profiles and packages and starts `sod-operator`, so `kubectl apply -f examples/securevm-vm-b.yaml`
right after it gets a placed VM (`--no-operator` for those who run the operator from source); it
returns once everything is ready and leaves the processes running (state in $SOD_SANDBOX_DIR,
default ~/.local/state/sod-operator/sandbox).
`up` on a running sandbox only reports it. `down` stops every process `up` started and removes
the state directory. `demo` runs the paper's story in it (sod_testbed.demo).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import yaml
from sod_operator.cli.errors import UsageError

from sod_testbed import cli_trust as trust_cli
from sod_testbed import demo as demo_story
from sod_testbed.binaries import REPO_ROOT, MissingBinaries, find_binaries
from sod_testbed.cluster import (
    AlreadyRunning,
    ClusterService,
    LocalCluster,
    NodeService,
    SandboxError,
    default_state_dir,
)
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import ApiError, resource_path
from sod_testbed.nodes import NodeSpecError, apply_cpus, apply_labels, parse_nodes
from sod_testbed.qemu.vm import QEMU

DEFAULT_NODES = "hyperwall=2,datasafe=1,plain=1"
PLAYER = "handler-player"
EXAMPLE_DIRS = (REPO_ROOT / "examples" / "profiles", REPO_ROOT / "examples" / "packages")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sandbox",
        help="run a local control plane, real KubeVirt controllers, fake nodes and the operator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the sandbox keeps its state (default $SOD_SANDBOX_DIR or "
        "~/.local/state/sod-operator/sandbox)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    up = actions.add_parser("up", help="start the sandbox (safe to repeat)")
    up.add_argument(
        "--nodes",
        default=DEFAULT_NODES,
        help=f"ARCH=COUNT[:ecc],... fake nodes named ARCH-1..N (default {DEFAULT_NODES}); "
        "ARCH is a profile name or 'plain'; ':ecc' gives them an ECC (P-256 EK) TPM",
    )
    up.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NODE:KEY=VALUE",
        help="an extra label for one node (repeatable)",
    )
    up.add_argument(
        "--cpu",
        action="append",
        default=[],
        metavar="ARCH_OR_NODE=intel|amd",
        help="the CPU of an architecture's nodes or of one node (repeatable; default: sev-snp "
        "nodes AMD, all others Intel). Host-model VMs live-migrate only between nodes of the "
        "same CPU model and vendor, as in KubeVirt",
    )
    up.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply modelled migration durations (default 1: the paper's ~7.6 s per GiB)",
    )
    up.add_argument(
        "--real-vms",
        type=int,
        default=0,
        metavar="N",
        help="run the first N VMIs to start as real QEMU guests (TCG; their migrations are real "
        "pre-copy migrations) instead of the model; a VMI annotated sod.dev/real-vm "
        "(idle | dirty:<MiB/s>:<MiB>) always is one. Needs qemu-system-x86 (make deps)",
    )
    up.add_argument(
        "--real-link",
        choices=("loopback", "netns"),
        default="loopback",
        help="the real guests' migration link: loopback at QEMU's 1 Gbit/s cap (default), or "
        "one network namespace per node on a bridge, each NIC shaped to 1 Gbit/s by tc (root)",
    )
    up.add_argument(
        "--no-player",
        action="store_true",
        help="do not start the virt-handler player (VMIs then stay Scheduled)",
    )
    up.add_argument(
        "--no-operator",
        action="store_true",
        help="do not start sod-operator (for those who run it from source)",
    )
    up.add_argument(
        "--no-examples", action="store_true", help="do not install examples/profiles, packages"
    )
    up.add_argument("-v", "--verbose", action="store_true", help="log each start-up step")
    trust_cli.add_up_arguments(up)
    up.set_defaults(func=cmd_up)

    down = actions.add_parser("down", help="stop every sandbox process and remove its state")
    down.set_defaults(func=cmd_down)

    status = actions.add_parser("status", help="show the sandbox's processes and nodes")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    kubeconfig = actions.add_parser("kubeconfig", help="print the kubeconfig path (only)")
    kubeconfig.set_defaults(func=cmd_kubeconfig)
    trust_cli.register_actions(actions)

    demo = actions.add_parser(
        "demo",
        help="the paper's story: place VM-A and VM-B, break a node, watch VM-B move",
        description=demo_story.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_story.add_arguments(demo)
    demo.set_defaults(func=cmd_demo)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _running(state_dir: Path) -> LocalCluster | None:
    cluster = LocalCluster.attach(state_dir)
    if cluster is None or not any(p.alive() for p in cluster.processes.values()):
        return None
    return cluster


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    try:
        nodes = apply_cpus(apply_labels(parse_nodes(args.nodes), args.label), args.cpu)
    except NodeSpecError as err:
        raise UsageError(str(err)) from None
    if args.time_scale <= 0:
        raise UsageError("--time-scale must be positive")
    if args.real_vms < 0:
        raise UsageError("--real-vms must be 0 or more")
    if args.real_link == "netns" and os.geteuid() != 0:
        raise UsageError("--real-link netns needs root (network namespaces and tc)")
    if args.real_vms and shutil.which(QEMU) is None:
        raise UsageError(f"--real-vms needs {QEMU}: run `make deps` (tools/install-system-deps.sh)")
    existing = _running(state_dir)
    if existing is not None:
        print(f"sandbox already running from {state_dir}")
        _print_usage(existing)
        return 0
    try:
        binaries = find_binaries()
    except MissingBinaries as err:
        raise UsageError(str(err)) from None
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="[sandbox] %(message)s", stream=sys.stderr)

    player_config = PlayerConfig(
        time_scale=args.time_scale, real_vms=args.real_vms, real_link=args.real_link
    )
    services: list[ClusterService] = []
    node_services: list[NodeService] = []
    if not args.no_examples:
        services.append(install_examples)
    if not args.no_trust:  # a swtpm + node-agent per node, then the verifier
        node_service, verifier_service = trust_cli.services(
            args.agent_interval, args.challenge_interval
        )
        node_services.append(node_service)
        services.append(verifier_service)
    if not args.no_player:

        def virt_handler_player(cluster: LocalCluster) -> None:
            start_player_process(cluster, player_config)

        services.append(virt_handler_player)
    if not args.no_operator:

        def sod_operator(cluster: LocalCluster) -> None:
            try:
                demo_story.ensure_operator(cluster, 90.0)
            except demo_story.DemoFailed as failed:
                raise SandboxError(f"sod-operator did not start: {failed}") from None

        services.append(sod_operator)
    cluster = LocalCluster(
        state_dir, nodes, binaries=binaries, node_services=node_services, cluster_services=services
    )
    t0 = time.monotonic()
    try:
        cluster.start()
    except AlreadyRunning as err:
        raise UsageError(str(err)) from None
    except (SandboxError, ApiError, OSError) as err:
        print(f"sodctl: sandbox failed to start: {err}", file=sys.stderr)
        print(f"component logs: {cluster.log_dir}", file=sys.stderr)
        cluster.stop(remove_state=False)
        return 1
    print(
        f"sandbox up in {time.monotonic() - t0:.1f}s: {len(nodes)} fake nodes"
        + ", virt-api and virt-controller"
        + ("" if args.no_player else ", virt-handler player")
        + ("" if args.no_operator else ", sod-operator")
        + " running"
    )
    _print_usage(cluster)
    return 0


def _print_usage(cluster: LocalCluster) -> None:
    try:
        kubectl = str(find_binaries().kubectl)
    except MissingBinaries:
        kubectl = "kubectl"
    print(f"  kubeconfig: {cluster.kubeconfig}")
    print(f"  kubectl:    {kubectl}")
    print(f"  nodes:      {', '.join(n.name for n in cluster.nodes)}")
    print(f"  logs:       {cluster.log_dir}")
    print("try:")
    print(
        f'  {kubectl} --kubeconfig "$(sodctl sandbox kubeconfig)" get nodes '
        "-L sod.dev/simulated-architecture"
    )
    print("stop it with: sodctl sandbox down")


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    cluster = LocalCluster.attach(state_dir)
    if cluster is None:
        print(f"no sandbox in {state_dir}")
        return 0
    alive = [name for name, p in cluster.processes.items() if p.alive()]
    cluster.stop(remove_state=True)
    left = [name for name, p in cluster.processes.items() if p.alive()]
    if left:
        print(f"sodctl: could not stop: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"sandbox stopped ({len(alive)} processes) and {state_dir} removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    cluster = LocalCluster.attach(state_dir)
    if cluster is None:
        if args.output == "json":
            print(json.dumps({"stateDir": str(state_dir), "running": False}))
        else:
            print(f"no sandbox in {state_dir}")
        return 3
    status = cluster.status()
    status["running"] = any(p["alive"] for p in status["processes"].values())
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 3
    print(f"sandbox in {state_dir}: {'running' if status['running'] else 'stopped'}")
    print(f"  server:     {status['server']}")
    print(f"  kubeconfig: {status['kubeconfig']}")
    print(f"  nodes:      {', '.join(status['nodes'])}")
    for name, proc in status["processes"].items():
        state = "running" if proc["alive"] else "exited"
        print(f"  {name:<24} pid {proc['pid']:<8} {state:<8} {proc['log']}")
    return 0 if status["running"] else 3


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    cluster = _running(state_dir)
    if cluster is None or not cluster.kubeconfig.is_file():
        raise UsageError(
            f"no sandbox is running in {state_dir}; start one with `sodctl sandbox up`"
        )
    print(cluster.kubeconfig)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    try:
        options = demo_story.options_from(args)
        parse_nodes(options.nodes)
    except (ValueError, NodeSpecError) as err:
        raise UsageError(str(err)) from None

    def up(nodes: str) -> int:
        # Exactly `sodctl sandbox up --nodes NODES -v` (its steps are the progress lines), with
        # every default of that command.
        parser = argparse.ArgumentParser(prog="sodctl")
        register(parser.add_subparsers())
        up_args = parser.parse_args(
            ["sandbox", "--state-dir", str(state_dir), "up", "--nodes", nodes, "-v"]
        )
        try:
            code: int = up_args.func(up_args)
        finally:
            logging.getLogger().setLevel(logging.WARNING)  # quiet again once the bed is up
        return code

    hooks = demo_story.SandboxHooks(up=up, install_catalog=install_examples)
    return demo_story.run(options, state_dir, hooks)


# ---- cluster services used by `up` --------------------------------------------------------------


def start_player_process(cluster: LocalCluster, config: PlayerConfig) -> None:
    """Run the virt-handler player as a supervised process and wait until it has synced."""
    argv = [
        sys.executable,
        "-m",
        "sod_testbed.handler_player",
        f"--kubeconfig={cluster.kubeconfig}",
        f"--state-dir={cluster.state_dir}",
        *config.argv(),
    ]
    proc = cluster.run_process(PLAYER, argv)
    cluster.wait_until(
        "the virt-handler player", lambda: "handler player started" in proc.tail(20000), PLAYER, 30
    )


def install_examples(cluster: LocalCluster) -> None:
    """Server-side apply the example ServerSecurityProfiles and SecurityPackages."""
    api = cluster.api()
    for directory in EXAMPLE_DIRS:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            for obj in yaml.safe_load_all(path.read_text()):
                if not obj:
                    continue
                api_version, kind = obj["apiVersion"], obj["kind"]
                plural = kind.lower() + "s"
                ns = obj["metadata"].get("namespace")
                try:
                    api.apply(
                        resource_path(api_version, plural, ns, obj["metadata"]["name"]),
                        obj,
                        "sod-sandbox",
                    )
                except ApiError as err:
                    raise SandboxError(f"installing {path}: {err}") from err
