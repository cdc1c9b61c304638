"""`sodctl sandbox demo`: the paper's story (Sections III-D, III-E and VI), told by the sandbox.

    sodctl sandbox demo                       # what `make demo` runs
    sodctl sandbox demo --nodes hyperwall=2,tpm-measured-boot=1,datasafe=1,plain=1

1. Sandbox: reuses the sandbox running in the state directory when it has the same nodes
   (healing any node a previous `sandbox break` left broken), else starts one exactly like
   `sodctl sandbox up --nodes ...`: per node a swtpm and a node-agent, and the verifier, so
   every node's profile label comes from a verified TPM quote, never from a hand-set label.
2. Operator: `sod-operator` as a supervised sandbox process (`sodctl sandbox down` stops
   it); a healthy one from an earlier run is reused.
3. Placement: namespace `sod-demo` is recreated, then VM-A (Basic), VM-B (Basic +
   HypervisorProtection) and the medical-records VM from examples/ are applied; each is shown
   Compliant on its node with the verified profile that justifies it.
4. Relocation: VM-B's node reports HyperWall memory violations (`sandbox break --how
   violation`); the verifier rejects the evidence and removes the label; the operator creates a
   VirtualMachineInstanceMigration; VM-B is live-migrated to the other compliant node; VM-A and
   the records VM are untouched. Then the node is healed and verified again.

When `qemu-system-x86_64` is installed (`make deps`), VM-B runs as a real guest (annotation
`sod.dev/real-vm: idle`: a stock Debian kernel with a busybox initramfs under QEMU/TCG, see
sod_testbed.handler_player) and its relocation is a real pre-copy live migration between two
QEMU processes, whose own figures (total time, downtime, data sent) and the check of the guest
on the target are shown. Without QEMU (or with --no-real-vm) the demo says so and the
migration's duration comes from the model (sod_testbed.migration_model).

Every time printed is observed: offsets are when this process's watches delivered an event
(one clock), so "label removed -> migration created" is the operator's reaction including
watch delivery; the migration time comes from the migration's observed phases and KubeVirt's
`phaseTransitionTimestamps` (one-second resolution). A step that does not happen within its
timeout fails the demo with the tails of the relevant component logs. The sandbox is left
running either way (`make demo-down` stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import io
import json
import os
import shutil
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from sod_operator.api.conditions import ConditionType
from sod_operator.api.constants import API_VERSION, profile_label
from sod_operator.kube import SYNCED, Informer

from sod_testbed.binaries import REPO_ROOT, MissingBinaries, find_binaries
from sod_testbed.cluster import LocalCluster, SandboxError, free_ports
from sod_testbed.handler_player import REAL_VM_ANNOTATION
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path
from sod_testbed.nodes import PLAIN, NodeSpec, parse_nodes
from sod_testbed.processes import tail_file
from sod_testbed.qemu.backend import migration_record
from sod_testbed.qemu.image import GuestImageError, build_guest
from sod_testbed.qemu.vm import QEMU
from sod_testbed.trust import VIOLATIONS_COUNTER, TrustBed, TrustConfig
from sod_testbed.trust import attach as attach_trust

Json = dict[str, Any]
T = TypeVar("T")

DEFAULT_NODES = "hyperwall=2,tpm-measured-boot=1,datasafe=1,plain=1"
DEFAULT_NAMESPACE = "sod-demo"
OPERATOR = "sod-operator"
KUBEVIRT = "kubevirt.io/v1"
FIELD_MANAGER = "sodctl-demo"
TRIGGER_LABEL = "sod.dev/trigger"
# Processes without which a running sandbox cannot tell the story (an agent may be stopped by
# `sandbox break --how silence`: the demo heals that instead).
CORE_PROCESSES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "virt-api",
    "virt-controller",
    "handler-player",
    "verifier",
)


@dataclass(frozen=True)
class StoryVM:
    name: str
    example: str
    role: str


STORY_VMS = (
    StoryVM("vm-a", "securevm-vm-a.yaml", "VM-A of Table II"),
    StoryVM("vm-b", "securevm-vm-b.yaml", "VM-B of Table II"),
    StoryVM("records", "securevm-medical-records.yaml", "the medical-records package"),
)
MOVER = "vm-b"


@dataclass(frozen=True)
class Timeouts:
    """Seconds each step may take before the demo fails (scaled by --timeout-factor)."""

    trust: float = 90.0
    operator: float = 60.0
    namespace: float = 120.0
    placement: float = 120.0
    revocation: float = 60.0
    migration_created: float = 30.0
    migration_done: float = 120.0
    compliant_again: float = 60.0
    heal: float = 60.0

    def scaled(self, factor: float) -> Timeouts:
        return Timeouts(**{k: v * factor for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class DemoOptions:
    nodes: str = DEFAULT_NODES
    namespace: str = DEFAULT_NAMESPACE
    timeouts: Timeouts = field(default_factory=Timeouts)
    examples: Path = REPO_ROOT / "examples"
    real_vm: bool = True


@dataclass(frozen=True)
class SandboxHooks:
    """What only the CLI layer knows: how `sodctl sandbox up` starts a sandbox (returns its exit
    code) and how it installs the example profiles and packages."""

    up: Callable[[str], int]
    install_catalog: Callable[[LocalCluster], None]


class DemoFailed(Exception):
    """A step did not happen: which step, what was seen, and whose logs tell why."""

    def __init__(self, step: str, detail: str, logs: Sequence[str] = ()):
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail
        self.logs = tuple(logs)


# ---- arguments ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes",
        default=DEFAULT_NODES,
        help=f"the sandbox's nodes (default {DEFAULT_NODES}); the story needs two nodes that "
        "satisfy VM-B (e.g. hyperwall=2)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="namespace of the story's SecureVMs, recreated on every run (default %(default)s)",
    )
    parser.add_argument(
        "--no-real-vm",
        action="store_true",
        help="VM-B's migration from the model even when QEMU is available",
    )
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=1.0,
        help="multiply every step's timeout (a slow machine: 2)",
    )


def options_from(args: argparse.Namespace) -> DemoOptions:
    if args.timeout_factor <= 0:
        raise ValueError("--timeout-factor must be positive")
    return DemoOptions(
        nodes=args.nodes,
        namespace=args.namespace,
        timeouts=Timeouts().scaled(args.timeout_factor),
        real_vm=not args.no_real_vm,
    )


# ---- pure helpers ------------------------------------------------------------------------------


def real_guest_problem() -> str | None:
    """Why VM-B cannot be a real QEMU guest here (None: it can)."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (`make deps` installs it)"
    try:
        build_guest(log=False)  # cached after the first build
    except GuestImageError as err:
        return f"the guest image could not be built: {err}"
    return None


def real_migration_record(state_dir: Path, migration_uid: str) -> Json | None:
    """The player's record of a real migration (QEMU's figures, the guest check), or None."""
    records = state_dir / "handler-player" / "real-vms.jsonl"
    return migration_record(records, migration_uid, timeout=60)


def describe_real_migration(record: Json) -> str:
    data = (record.get("transferred_bytes") or 0) / 1e6
    return (
        f"QEMU's pre-copy: total {record.get('total_ms')} ms, downtime "
        f"{record.get('downtime_ms')} ms, {data:.0f} MB sent in {record.get('dirty_sync_count')} "
        f"passes; the guest on the target: {record.get('guest_check')}"
    )


def sandbox_mismatch(running: Sequence[NodeSpec], wanted: Sequence[NodeSpec]) -> str | None:
    """Why a running sandbox's nodes differ from the wanted ones (None when they are the same)."""
    have = {n.name: n.architecture for n in running}
    want = {n.name: n.architecture for n in wanted}
    parts = []
    if missing := sorted(set(want) - set(have)):
        parts.append(f"lacks {', '.join(missing)}")
    if extra := sorted(set(have) - set(want)):
        parts.append(f"also has {', '.join(extra)}")
    if other := sorted(n for n in set(have) & set(want) if have[n] != want[n]):
        parts.append(", ".join(f"{n} is {have[n]}, not {want[n]}" for n in other))
    return "; ".join(parts) or None


def condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def is_true(obj: Mapping[str, Any] | None, ctype: str) -> bool:
    return (condition(obj, ctype) or {}).get("status") == "True"


def compliant_on(svm: Mapping[str, Any] | None) -> str | None:
    """The node a SecureVM is Compliant on, or None."""
    if not is_true(svm, ConditionType.COMPLIANT):
        return None
    node = ((svm or {}).get("status") or {}).get("nodeName")
    return str(node) if node else None


def verdict(att: Mapping[str, Any] | None, profile: str) -> Mapping[str, Any] | None:
    for v in ((att or {}).get("status") or {}).get("verdicts") or []:
        if v.get("profile") == profile:
            return dict(v)
    return None


def labels_of(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def verified_profiles(node: Mapping[str, Any] | None) -> list[str]:
    prefix = profile_label("")
    return sorted(k[len(prefix) :] for k in labels_of(node) if k.startswith(prefix))


def describe_request(svm: Mapping[str, Any]) -> str:
    """`Basic+HypervisorProtection; C+I; FullVM` or `package medical-records; C+I; Data`."""
    security = (svm.get("spec") or {}).get("security") or {}
    request = (svm.get("status") or {}).get("request") or {}
    if security.get("package"):
        what = f"package {security['package']}"
    elif security.get("options"):
        what = "+".join(security["options"])
    else:
        what = "explicit matrix"
    props = sorted({p for row in request.get("matrix") or [] for p in row.get("properties", [])})
    short = "+".join(p[0] for p in props) if props else "?"
    return f"{what}; {short}; {request.get('scope', 'FullVM')}"


def seconds(value: float) -> str:
    """A duration for people: 48 ms, 2.33 s, 1 min 05 s."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    return f"{int(value // 60)} min {int(value % 60):02d} s"


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def phase_span(vmim: Mapping[str, Any], first: str, last: str) -> float | None:
    """Seconds between two entries of a VMIM's phaseTransitionTimestamps (1-s resolution)."""
    stamps = {
        t["phase"]: parse_time(t.get("phaseTransitionTimestamp"))
        for t in ((vmim.get("status") or {}).get("phaseTransitionTimestamps") or [])
    }
    a, b = stamps.get(first), stamps.get(last)
    return (b - a).total_seconds() if a and b else None


# ---- the timeline ------------------------------------------------------------------------------


class Timeline:
    """Prints `[+12.3s] text` lines, offsets from the start of the demo (monotonic clock),
    wrapped to `width` columns under their text."""

    INDENT = " " * 11

    def __init__(self, out: TextIO, t0: float | None = None, width: int = 100):
        self.out = out
        self.t0 = time.monotonic() if t0 is None else t0
        self.width = width

    def offset(self, t: float) -> float:
        return t - self.t0

    def at(self, t: float, text: str) -> None:
        self._wrap(f"[{f'+{self.offset(t):.1f}s':>8}] ", self.INDENT + "  ", text)

    def now(self, text: str) -> None:
        self.at(time.monotonic(), text)

    def more(self, text: str) -> None:
        self._wrap(self.INDENT, self.INDENT + "  ", text)

    def _wrap(self, first: str, rest: str, text: str) -> None:
        lines = textwrap.wrap(
            text,
            self.width,
            initial_indent=first,
            subsequent_indent=rest,
            break_on_hyphens=False,
            break_long_words=False,
        )
        for line in lines or [first.rstrip()]:
            self._print(line)

    def section(self, title: str) -> None:
        self._print(f"\n== {title}")

    def plain(self, text: str = "") -> None:
        self._print(text)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


# ---- watching the story ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One object as a watch delivered it, and when (time.monotonic())."""

    t: float
    kind: str
    type: str
    obj: Json

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


class Observer:
    """List + watch of the story's kinds; every delivered object is kept with its arrival time,
    so each milestone is reported when it was observed, not when the demo looked."""

    def __init__(self, kubeconfig: Path, namespace: str):
        self.kubeconfig = kubeconfig
        self.paths = {
            "node": resource_path("v1", "nodes"),
            "nodeattestation": resource_path(API_VERSION, "nodeattestations"),
            "securevm": resource_path(API_VERSION, "securevms", namespace=namespace),
            "vmi": resource_path(KUBEVIRT, "virtualmachineinstances", namespace=namespace),
            "vmim": resource_path(
                KUBEVIRT, "virtualmachineinstancemigrations", namespace=namespace
            ),
        }
        self.events: list[Seen] = []
        self.latest: dict[str, dict[str, Json]] = {kind: {} for kind in self.paths}
        self.changed = threading.Condition()
        self._listed: set[str] = set()
        self._apis: list[KubeApi] = []
        self._informers: list[Informer] = []

    def start(self) -> Observer:
        for kind, path in self.paths.items():
            api = KubeApi(self.kubeconfig, user_agent="sodctl-demo")  # one stream per client
            self._apis.append(api)
            handler = functools.partial(self._on_event, kind)
            self._informers.append(Informer(api, path, handler=handler, watch_timeout=240).start())
        with self.changed:  # every kind listed, as the story's first milestones need
            self.changed.wait_for(lambda: self._listed >= set(self.paths), timeout=60)
        return self

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()
        for api in self._apis:
            api.close_watches()
        for informer in self._informers:
            informer.thread.join(timeout=5)

    def _on_event(self, kind: str, etype: str, obj: Json) -> None:
        t = time.monotonic()
        with self.changed:
            if etype == SYNCED:
                self._listed.add(kind)
            else:
                self._record(kind, etype if kind in self._listed else "LISTED", obj, t)
            self.changed.notify_all()

    def _record(self, kind: str, etype: str, obj: Json, t: float) -> None:
        """Keep one delivered object (called with `changed` held)."""
        self.events.append(Seen(t, kind, etype, obj))
        name = obj["metadata"]["name"]
        if etype == "DELETED":
            self.latest[kind].pop(name, None)
        else:
            self.latest[kind][name] = obj

    def first(self, kind: str, since: float, match: Callable[[Seen], bool]) -> Seen | None:
        """The first delivered object of `kind` at or after `since` that matches (call with
        `changed` held, i.e. from a `wait` predicate)."""
        for seen in self.events:
            if seen.t >= since and seen.kind == kind and match(seen):
                return seen
        return None

    def all(self, kind: str, since: float, match: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.events if s.t >= since and s.kind == kind and match(s)]

    def get(self, kind: str, name: str) -> Json | None:
        with self.changed:
            return self.latest[kind].get(name)

    def wait(
        self, find: Callable[[], T | None], timeout: float, step: str, logs: Sequence[str]
    ) -> T:
        """Until `find()` (called with the lock held) returns something; else DemoFailed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = find()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(step, f"not observed within {timeout:.0f} s", logs)
                self.changed.wait(min(left, 0.5))


# ---- the operator as a sandbox process ---------------------------------------------------------


@dataclass(frozen=True)
class OperatorInfo:
    pid: int
    metrics_port: int
    liveness_port: int
    log: Path
    reused: bool

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.liveness_port}/healthz")

    def metrics(self) -> str | None:
        try:
            with _LOCAL.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return None


# The operator serves on loopback: never through a proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str) -> bool:
    try:
        with _LOCAL.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def operator_command() -> list[str]:
    script = Path(sys.executable).with_name("sod-operator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sod_operator.main"]


def ensure_operator(cluster: LocalCluster, timeout: float) -> OperatorInfo:
    """A healthy `sod-operator` supervised by the sandbox: the running one, or a new one."""
    info_path = cluster.state_dir / "demo" / "operator.json"
    proc = cluster.processes.get(OPERATOR)
    if proc is not None and proc.alive() and info_path.is_file():
        saved = json.loads(info_path.read_text())
        info = OperatorInfo(
            proc.record.pid, saved["metricsPort"], saved["livenessPort"], proc.log_path, True
        )
        if info.healthy():
            return info
    if proc is not None and proc.alive():
        proc.stop()  # running but unhealthy, or its ports are unknown: start it afresh
    metrics_port, liveness_port = free_ports(2)
    argv = [
        *operator_command(),
        f"--kubeconfig={cluster.kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        f"--liveness-port={liveness_port}",
        # A fixed identity retakes its own Lease at once after a restart.
        "--identity=sod-operator-sandbox",
        "--lease-namespace=sod-system",
        # The renewals ConfigMap of the verifier `sodctl sandbox up` runs (its defaults).
        *TrustConfig().operator_args(),
    ]
    proc = cluster.run_process(OPERATOR, argv, env={"PYTHONUNBUFFERED": "1"})
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info_path.write_text(
        json.dumps({"metricsPort": metrics_port, "livenessPort": liveness_port}) + "\n"
    )
    info = OperatorInfo(proc.record.pid, metrics_port, liveness_port, proc.log_path, False)
    deadline = time.monotonic() + timeout
    while not info.healthy():
        if not proc.alive():
            raise DemoFailed("starting sod-operator", "it exited", [OPERATOR])
        if time.monotonic() > deadline:
            raise DemoFailed(
                "starting sod-operator", f"/healthz not ready within {timeout:.0f} s", [OPERATOR]
            )
        time.sleep(0.2)
    return info


def reaction_metric(text: str | None, trigger: str = "TrustRevoked") -> tuple[float, float] | None:
    """(sum, count) of `sod_reaction_seconds{trigger=...}` in a Prometheus text exposition
    ((0, 0) before the first observation; None without metrics)."""
    if text is None:
        return None
    found = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in ("sum", "count"):
            head = f'sod_reaction_seconds_{part}{{trigger="{trigger}"}} '
            if line.startswith(head):
                found[part] = float(line[len(head) :])
    return found["sum"], found["count"]


# ---- the demo ----------------------------------------------------------------------------------


def run(
    options: DemoOptions, state_dir: Path, hooks: SandboxHooks, out: TextIO = sys.stdout
) -> int:
    """Tell the story; 0 when every step happened, 1 when one did not (with the logs)."""
    wanted = parse_nodes(options.nodes)  # the CLI reports a NodeSpecError as a usage error
    tl = Timeline(out)
    tl.plain(
        "Security on Demand for KubeVirt: the paper's story in a local sandbox "
        f"(started {dt.datetime.now().astimezone():%H:%M:%S}; [+s] = seconds since then)"
    )
    cluster: LocalCluster | None = None
    try:
        cluster, bed = prepare_sandbox(state_dir, wanted, hooks, options, tl)
        tl.section("The operator")
        op = ensure_operator(cluster, options.timeouts.operator)
        tl.now(
            f"sod-operator {'already running' if op.reused else 'started'} (pid {op.pid}, "
            f"supervised by the sandbox; log {op.log})"
        )
        story = Story(cluster, bed, op, options, tl)
        story.tell()
    except DemoFailed as failed:
        report_failure(failed, cluster, tl)
        return 1
    except (ApiError, SandboxError, OSError) as err:  # the sandbox itself stopped answering
        report_failure(
            DemoFailed("talking to the sandbox", str(err), ["kube-apiserver", "etcd"]), cluster, tl
        )
        return 1
    next_steps(cluster, options, story, tl)
    return 0


def prepare_sandbox(
    state_dir: Path,
    wanted: Sequence[NodeSpec],
    hooks: SandboxHooks,
    options: DemoOptions,
    tl: Timeline,
) -> tuple[LocalCluster, TrustBed]:
    tl.section("The sandbox: a real control plane, fake nodes, real TPMs (swtpm)")
    cluster = LocalCluster.attach(state_dir)
    if cluster is not None and any(p.alive() for p in cluster.processes.values()):
        mismatch = sandbox_mismatch(cluster.nodes, wanted)
        if mismatch is not None:
            raise DemoFailed(
                "reusing the running sandbox",
                f"the sandbox in {state_dir} runs other nodes than the demo's ({mismatch}); "
                "stop it with `make demo-down` (or `sodctl sandbox down`), or run the demo "
                f"with --nodes matching it",
            )
        dead = [
            name
            for name in (*CORE_PROCESSES, *(f"swtpm-{n.name}" for n in wanted))
            if name not in cluster.processes or not cluster.processes[name].alive()
        ]
        if dead:
            tl.now(f"the sandbox in {state_dir} is incomplete ({', '.join(dead)} not running)")
            tl.more("stopping it to start afresh")
            cluster.stop(remove_state=True)
            cluster = None
        else:
            tl.now(f"reusing the sandbox running in {state_dir}")
    if cluster is None or not any(p.alive() for p in cluster.processes.values()):
        names = ", ".join(n.name for n in wanted)
        tl.now(f"starting: `sodctl sandbox up --nodes {options.nodes}` ({names})")
        said = io.StringIO()  # its usage hints would repeat ours; shown when it fails
        with contextlib.redirect_stdout(said):
            code = hooks.up(options.nodes)
        if code != 0:
            tl.plain(said.getvalue())
            raise DemoFailed("starting the sandbox", f"`sodctl sandbox up` exited with {code}")
        cluster = LocalCluster.attach(state_dir)
        if cluster is None:
            raise DemoFailed("starting the sandbox", f"no sandbox state in {state_dir}")
        tl.now(said.getvalue().splitlines()[0] if said.getvalue() else "sandbox up")
    try:
        bed = attach_trust(state_dir)
    except SandboxError as err:
        raise DemoFailed("attaching the trust monitor", str(err)) from None
    try:
        hooks.install_catalog(cluster)  # idempotent; a sandbox started --no-examples gets it
    except (SandboxError, ApiError) as err:
        raise DemoFailed("installing the example profiles and packages", str(err)) from None
    heal_all(bed, wanted, tl)
    show_trust(cluster, wanted, options.timeouts.trust, tl)
    show_catalog(cluster.api(), tl)
    return cluster, bed


def heal_all(bed: TrustBed, nodes: Sequence[NodeSpec], tl: Timeline) -> None:
    """Undo whatever an earlier `sandbox break` left (a reused sandbox must start honest)."""
    for node in nodes:
        try:
            done = bed.heal_node(node.name)
        except SandboxError as err:
            raise DemoFailed(f"healing {node.name}", str(err), [f"swtpm-{node.name}"]) from None
        if done != ["nothing to heal"]:
            tl.now(f"{node.name} was left broken by an earlier run: {'; '.join(done)}")


def show_trust(
    cluster: LocalCluster, nodes: Sequence[NodeSpec], timeout: float, tl: Timeline
) -> None:
    """Wait until the verifier has verified every node's architecture, then print who is what."""
    api = cluster.api()
    deadline = time.monotonic() + timeout
    while True:
        objs = {n.name: api.get(resource_path("v1", "nodes", name=n.name)) for n in nodes}
        missing = [
            n.name
            for n in nodes
            if n.architecture != PLAIN and n.architecture not in verified_profiles(objs[n.name])
        ]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise DemoFailed(
                "waiting for the verifier",
                f"nodes not verified within {timeout:.0f} s: {', '.join(missing)}",
                ["verifier", *(f"agent-{n}" for n in missing)],
            )
        time.sleep(0.3)
    tl.now(
        "the verifier checked each node's evidence: a TPM quote (swtpm) by an EK-certified AK "
        "over its nonce, PCRs 0, 4, 7 against the profile's golden values, the architecture "
        f"claim and the runtime counters ({VIOLATIONS_COUNTER}); only then does it label the "
        "node:"
    )
    tl.plain(f"{tl.INDENT}  {'node':<22}{'node-agent claims':<20}verified profiles (node labels)")
    for n in nodes:
        att = api.get_or_none(resource_path(API_VERSION, "nodeattestations", name=n.name))
        claims = ((att or {}).get("spec") or {}).get("claims") or {}
        claim = claims.get("architecture") or "nothing"
        verified = ", ".join(verified_profiles(objs[n.name])) or "none"
        tl.plain(f"{tl.INDENT}  {n.name:<22}{claim:<20}{verified}")


def show_catalog(api: KubeApi, tl: Timeline) -> None:
    profiles = api.list(resource_path(API_VERSION, "serversecurityprofiles"))["items"]
    packages = api.list(resource_path(API_VERSION, "securitypackages"))["items"]
    paper = sorted(
        p["metadata"]["name"]
        for p in profiles
        if str(p["spec"].get("reference", "")).startswith("Table III")
    )
    today = sorted(p["metadata"]["name"] for p in profiles if p["metadata"]["name"] not in paper)
    tl.now(
        f"catalog: {len(profiles)} ServerSecurityProfiles ({len(paper)} rows of Table III + "
        f"today's {', '.join(today)}), SecurityPackages: "
        + ", ".join(sorted(p["metadata"]["name"] for p in packages))
    )


@dataclass
class Placement:
    node: str
    profile: str
    vmi_uid: str
    seen: float


@dataclass
class Measured:
    broken_node: str = ""
    target_node: str = ""
    migration: str = ""
    t_break: float = 0.0
    t_verdict: float = 0.0
    t_label: float = 0.0
    t_vmim: float = 0.0
    t_started: float = 0.0
    """VM-B's VMI first observed with this migration's startTimestamp (KubeVirt's own)."""
    t_succeeded: float = 0.0
    t_compliant: float = 0.0
    t_heal: float = 0.0
    t_healed: float = 0.0
    stamped_seconds: float | None = None
    precopy_seconds: float | None = None
    real: Json | None = None  # the player's record of VM-B's real migration
    operator_reaction: float | None = None


class Story:
    def __init__(
        self,
        cluster: LocalCluster,
        bed: TrustBed,
        operator: OperatorInfo,
        options: DemoOptions,
        tl: Timeline,
    ):
        self.cluster = cluster
        self.api = cluster.api()
        self.bed = bed
        self.operator = operator
        self.options = options
        self.ns = options.namespace
        self.timeouts = options.timeouts
        self.tl = tl
        self.placed: dict[str, Placement] = {}
        self.measured = Measured()
        self.real = False
        self.costs: dict[str, int] = {}

    # -- the whole story

    def tell(self) -> None:
        self.tl.section(f"Deployment: the paper's VMs from examples/, in namespace {self.ns}")
        self.reset_namespace()
        self.costs = {
            p["metadata"]["name"]: int(p["spec"].get("cost", 1))
            for p in self.api.list(resource_path(API_VERSION, "serversecurityprofiles"))["items"]
        }
        self.obs = Observer(self.cluster.kubeconfig, self.ns).start()
        try:
            self.place()
            self.relocate()
            self.heal()
        finally:
            self.obs.stop()
        self.summary()

    # -- namespace

    def reset_namespace(self) -> None:
        path = resource_path("v1", "namespaces", name=self.ns)
        if self.api.get_or_none(path) is not None:
            self.tl.now(f"deleting namespace {self.ns} left by an earlier run")
            self.api.delete(path)
            deadline = time.monotonic() + self.timeouts.namespace
            while self.api.get_or_none(path) is not None:
                if time.monotonic() > deadline:
                    raise DemoFailed(
                        f"deleting namespace {self.ns}",
                        f"still there after {self.timeouts.namespace:.0f} s",
                        ["kube-controller-manager", OPERATOR, "virt-controller", "handler-player"],
                    )
                time.sleep(0.3)
        self.api.create(
            resource_path("v1", "namespaces"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}},
        )
        try:
            self.cluster.wait_for_service_account(self.ns, timeout=self.timeouts.namespace)
        except SandboxError as err:
            raise DemoFailed(
                f"creating namespace {self.ns}", str(err), ["kube-controller-manager"]
            ) from None

    # -- deployment mode

    def choose_real_guest(self) -> None:
        problem = real_guest_problem() if self.options.real_vm else "--no-real-vm"
        self.real = problem is None
        if self.real:
            self.tl.now(
                f"{MOVER} runs as a real guest ({QEMU}, TCG: Debian's kernel and a busybox "
                f"initramfs): its migration will be a real pre-copy between two QEMU processes"
            )
        else:
            self.tl.now(f"no real guest ({problem}): {MOVER}'s migration time comes from the model")

    def place(self) -> None:
        tl = self.tl
        self.choose_real_guest()
        for vm in STORY_VMS:
            body = yaml.safe_load((self.options.examples / vm.example).read_text())
            body["metadata"]["namespace"] = self.ns
            if vm.name == MOVER and self.real:
                meta = body["spec"]["template"]["template"].setdefault("metadata", {})
                meta.setdefault("annotations", {})[REAL_VM_ANNOTATION] = "idle"
            self.api.create(resource_path(API_VERSION, "securevms", namespace=self.ns), body)
        tl.now(
            "applied "
            + ", ".join(f"{vm.name} ({vm.role}, examples/{vm.example})" for vm in STORY_VMS)
        )
        seen = {
            vm.name: self.obs.wait(
                self._first_compliant(vm.name),
                self.timeouts.placement,
                f"{vm.name} Compliant on a node",
                [OPERATOR, "virt-controller", "handler-player", "kube-scheduler"],
            )
            for vm in STORY_VMS
        }
        for vm in sorted(STORY_VMS, key=lambda v: seen[v.name].t):
            s = seen[vm.name]
            node = compliant_on(s.obj) or ""
            profile = str(s.obj["status"].get("nodeProfile") or "")
            vmi = self.obs.get("vmi", vm.name) or {}
            self.placed[vm.name] = Placement(
                node, profile, str(vmi.get("metadata", {}).get("uid", "")), s.t
            )
            tl.at(s.t, f"{vm.name} ({describe_request(s.obj)}) is Compliant on {node}")
            tl.more(f"why: {self.why(s.obj, node, profile)}")

    def _first_compliant(self, name: str) -> Callable[[], Seen | None]:
        return lambda: self.obs.first(
            "securevm", 0.0, lambda s: s.name == name and compliant_on(s.obj) is not None
        )

    def why(self, svm: Mapping[str, Any], node: str, profile: str) -> str:
        """The justifying profile and, when there was a choice, why this node class."""
        satisfying = set(svm["status"].get("satisfyingProfiles") or [])
        cost = self.costs.get(profile, 1)
        text = f"{profile} is verified on {node} and satisfies the request (cost {cost})"
        others: dict[str, list[str]] = {}
        with self.obs.changed:
            nodes = dict(self.obs.latest["node"])
        for name, obj in sorted(nodes.items()):
            if name == node:
                continue
            ok = sorted(p for p in verified_profiles(obj) if p in satisfying)
            if ok:
                cheapest = min(ok, key=lambda p: self.costs.get(p, 1))
                others.setdefault(cheapest, []).append(name)
        if not others:
            return text + "; no other node qualifies"
        dearer = {p: ns for p, ns in others.items() if self.costs.get(p, 1) > cost}
        same = [n for p, ns in others.items() if self.costs.get(p, 1) <= cost for n in ns]
        parts = []
        if dearer:
            parts.append(
                "cost-aware placement kept it off "
                + "; ".join(
                    f"{', '.join(ns)} ({p}, cost {self.costs.get(p, 1)})"
                    for p, ns in sorted(dearer.items())
                )
            )
        if same:
            parts.append(f"also eligible: {', '.join(same)}")
        return text + "; " + "; ".join(parts)

    # -- relocation mode

    def relocate(self) -> None:
        tl, m = self.tl, self.measured
        start = self.placed[MOVER]
        node, profile = start.node, start.profile
        svm = self.obs.get("securevm", MOVER) or {}
        if int(svm.get("status", {}).get("eligibleNodes") or 0) < 2:
            raise DemoFailed(
                f"checking that {MOVER} has somewhere to go",
                f"only {node} can run {MOVER}; give the sandbox a second node of a profile "
                "that satisfies it, e.g. --nodes hyperwall=2,...",
            )
        tl.section(f"Relocation: {node} loses its runtime trust")
        before = reaction_metric(self.operator.metrics())
        m.broken_node = node
        m.t_break = time.monotonic()
        said = self.bed.break_node(node, "violation")
        tl.at(m.t_break, f"break: {said} (`sodctl sandbox break {node} --how violation`)")
        tl.more(
            "HyperWall's memory-violation counter, the paper's runtime trust evidence: the "
            "node-agent reports the change at once, in a fresh TPM quote"
        )
        agent_logs = ["verifier", f"agent-{node}"]
        rejected = self.obs.wait(
            lambda: self.obs.first(
                "nodeattestation",
                m.t_break,
                lambda s: (
                    s.name == node and (verdict(s.obj, profile) or {}).get("result") == "Rejected"
                ),
            ),
            self.timeouts.revocation,
            f"the verifier rejecting {profile} on {node}",
            agent_logs,
        )
        label = profile_label(profile)
        unlabelled = self.obs.wait(
            lambda: self.obs.first(
                "node", m.t_break, lambda s: s.name == node and label not in labels_of(s.obj)
            ),
            self.timeouts.revocation,
            f"the verifier removing {label} from {node}",
            agent_logs,
        )
        m.t_verdict, m.t_label = rejected.t, unlabelled.t
        v = verdict(rejected.obj, profile) or {}
        events = [
            (rejected.t, f"verifier: {profile} on {node} Rejected: {v.get('reason')}: "
             f"{_first_check(str(v.get('message', '')))}"),
            (unlabelled.t, f"verifier: label {label} removed from {node}"),
        ]  # fmt: skip
        for t, text in sorted(events):
            tl.at(t, text)

        created = self.obs.wait(
            lambda: self.obs.first(
                "vmim", m.t_break, lambda s: s.obj["spec"].get("vmiName") == MOVER
            ),
            self.timeouts.migration_created,
            f"the operator creating a VirtualMachineInstanceMigration for {MOVER}",
            [OPERATOR],
        )
        m.t_vmim, m.migration = created.t, created.name
        trigger = labels_of(created.obj).get(TRIGGER_LABEL, "?")
        tl.at(
            created.t,
            f"operator: {MOVER} is not compliant ({trigger}): created "
            f"VirtualMachineInstanceMigration {created.name}",
        )
        tl.more(f"label removed -> migration created: {seconds(m.t_vmim - m.t_label)}")
        done = self.follow_migration(created.name, node)
        m.t_started = self.migration_started(str(created.obj["metadata"].get("uid", "")))

        after = reaction_metric(self.operator.metrics())
        if before is not None and after is not None and after[1] > before[1]:
            m.operator_reaction = (after[0] - before[0]) / (after[1] - before[1])

        moved = self.obs.wait(
            lambda: self.obs.first(
                "securevm",
                m.t_break,
                lambda s: s.name == MOVER and compliant_on(s.obj) not in (None, node),
            ),
            self.timeouts.compliant_again,
            f"{MOVER} Compliant on another node",
            [OPERATOR, "virt-controller", "handler-player"],
        )
        m.t_compliant = moved.t
        m.target_node = compliant_on(moved.obj) or ""
        state = (done.obj.get("status") or {}).get("migrationState") or {}
        stamps = ", ".join(
            f"{t['phase']} {str(t.get('phaseTransitionTimestamp', ''))[11:19]}"
            for t in (done.obj.get("status") or {}).get("phaseTransitionTimestamps") or []
        )
        finals = [
            (
                done.t,
                f"kubevirt: {done.name} Succeeded: {MOVER} live-migrated "
                f"{state.get('sourceNode', node)} -> {state.get('targetNode') or m.target_node}",
                [f"KubeVirt's phase timestamps: {stamps}"],
            ),
            (
                moved.t,
                f"{MOVER} is Compliant again on {m.target_node} "
                f"({moved.obj['status'].get('nodeProfile')})",
                [],
            ),
        ]
        if self.real:
            m.real = real_migration_record(self.cluster.state_dir, done.obj["metadata"]["uid"])
            finals[0][2].append(describe_real_migration(m.real) if m.real else "no QEMU record")
        for t, text, notes in sorted(finals, key=lambda f: f[0]):
            tl.at(t, text)
            for note in notes:
                tl.more(note)
        self.check_untouched()

    def migration_started(self, uid: str) -> float:
        """When VM-B's VMI was first seen carrying this migration's startTimestamp (0.0 if
        never: then the summary leaves the line out)."""

        def started(seen: Seen) -> bool:
            state = (seen.obj.get("status") or {}).get("migrationState") or {}
            return bool(state.get("startTimestamp")) and state.get("migrationUid") == uid

        with self.obs.changed:
            seen = self.obs.first(
                "vmi", self.measured.t_vmim, lambda s: s.name == MOVER and started(s)
            )
        return seen.t if seen else 0.0

    def follow_migration(self, name: str, source: str) -> Seen:
        """Print each phase of the migration as observed; return the Succeeded object."""
        tl, m = self.tl, self.measured
        shown: set[str] = set()
        while True:

            def next_phase() -> Seen | None:
                return self.obs.first(
                    "vmim",
                    m.t_vmim,
                    lambda s: (
                        s.name == name
                        and (s.obj.get("status") or {}).get("phase", "") not in shown | {""}
                    ),
                )

            seen = self.obs.wait(
                next_phase,
                self.timeouts.migration_done,
                f"migration {name} reaching its next phase (seen: {', '.join(shown) or 'none'})",
                ["virt-controller", "handler-player", "kube-scheduler", OPERATOR],
            )
            status = seen.obj.get("status") or {}
            phase = str(status["phase"])
            shown.add(phase)
            state = status.get("migrationState") or {}
            if phase == "Failed":
                tl.at(seen.t, f"kubevirt: {name} Failed")
                raise DemoFailed(
                    f"migrating {MOVER}",
                    f"KubeVirt reports migration {name} Failed: {state.get('failureReason', '')}",
                    ["virt-controller", "handler-player", OPERATOR],
                )
            if phase == "Succeeded":
                m.t_succeeded = seen.t
                m.stamped_seconds = phase_span(seen.obj, "Pending", "Succeeded")
                start = parse_time(state.get("startTimestamp"))
                end = parse_time(state.get("endTimestamp"))
                m.precopy_seconds = (end - start).total_seconds() if start and end else None
                return seen
            detail = ""
            if phase == "Running":
                # The VMI carries the migration's state while it runs (the VMIM gets it at the end).
                vmi_state = ((self.obs.get("vmi", MOVER) or {}).get("status") or {}).get(
                    "migrationState"
                ) or {}
                target = vmi_state.get("targetNode") or state.get("targetNode")
                detail = f": pre-copy {source} -> {target or 'the target pod'}"
            tl.at(seen.t, f"kubevirt: {name} {phase}{detail}")

    def check_untouched(self) -> None:
        """The VMs whose nodes kept their trust did not move, restart or lose compliance."""
        m = self.measured
        for vm in STORY_VMS:
            if vm.name == MOVER:
                continue
            placed = self.placed[vm.name]
            with self.obs.changed:
                vmi = self.obs.latest["vmi"].get(vm.name) or {}
                svm = self.obs.latest["securevm"].get(vm.name)
                migrations = self.obs.all("vmim", 0.0, _migrates(vm.name))
                lapses = self.obs.all("securevm", m.t_break, _not_compliant(vm.name))
            problems = []
            if vmi.get("metadata", {}).get("uid") != placed.vmi_uid:
                problems.append("its VMI was replaced")
            if (vmi.get("status") or {}).get("nodeName") != placed.node:
                problems.append(f"it left {placed.node}")
            if migrations:
                problems.append(f"migrations were created: {migrations[0].name}")
            if lapses or compliant_on(svm) != placed.node:
                problems.append("it was not Compliant throughout")
            if problems:
                raise DemoFailed(
                    f"checking that {vm.name} was left alone", "; ".join(problems), [OPERATOR]
                )
            self.tl.more(
                f"{vm.name} untouched: still on {placed.node}, same VMI "
                f"(uid {placed.vmi_uid[:8]}), no migration, Compliant throughout"
            )

    # -- heal

    def heal(self) -> None:
        tl, m = self.tl, self.measured
        node, profile = m.broken_node, self.placed[MOVER].profile
        tl.section(f"Heal: {node} reports honest evidence again")
        m.t_heal = time.monotonic()
        done = self.bed.heal_node(node)
        tl.at(m.t_heal, f"heal: {node}: {'; '.join(done)} (`sodctl sandbox heal {node}`)")
        label = profile_label(profile)
        back = self.obs.wait(
            lambda: self.obs.first(
                "node", m.t_heal, lambda s: s.name == node and label in labels_of(s.obj)
            ),
            self.timeouts.heal,
            f"the verifier labelling {node} {profile} again",
            ["verifier", f"agent-{node}"],
        )
        m.t_healed = back.t
        tl.at(back.t, f"verifier: {profile} verified on {node} again; label {label} restored")
        where = compliant_on(self.obs.get("securevm", MOVER))
        tl.more(
            f"{MOVER} stays on {where}: a compliant VM is not moved back "
            "(relocation is triggered by lost trust or a raised request, never by regained trust)"
        )

    # -- numbers

    def summary(self) -> None:
        tl, m = self.tl, self.measured
        tl.section("Measured in this run (one run on a shared machine; `make bench` for p50/p99)")
        rows = [
            (
                "break -> verifier rejects the evidence",
                seconds(m.t_verdict - m.t_break),
                "the node-agent's fresh quote, then verification",
            ),
            (
                "evidence rejected -> label removed"
                if m.t_label >= m.t_verdict
                else "label removed -> verdict written",
                seconds(abs(m.t_label - m.t_verdict)),
                "",
            ),
            (
                "label removed -> migration created",
                seconds(m.t_vmim - m.t_label),
                "the operator's reaction, watch delivery included",
            ),
        ]
        if m.operator_reaction is not None:
            rows.append(
                (
                    "  (the operator's own measure)",
                    seconds(m.operator_reaction),
                    "sod_reaction_seconds: trigger event -> migration created",
                )
            )
        if m.t_started:
            rows.append(
                (
                    "label removed -> migration started",
                    seconds(m.t_started - m.t_label),
                    "the span the paper's 2.33 s (OpenStack's added delay to trigger a "
                    "migration) corresponds to; here kwok pods start at once",
                )
            )
        stamped = (
            f"KubeVirt's phase timestamps (1 s resolution): {m.stamped_seconds:.0f} s"
            if m.stamped_seconds is not None
            else ""
        )
        rows.append(("migration created -> Succeeded", seconds(m.t_succeeded - m.t_vmim), stamped))
        if m.real is not None and m.real.get("total_ms") is not None:
            rows.append(
                (
                    "  of which pre-copy (real, QEMU)",
                    seconds(m.real["total_ms"] / 1000),
                    f"{m.real.get('memory_mib')} MiB idle TCG guest, loopback capped at 1 Gbit/s; "
                    "the paper's Table V: 7-9 s",
                )
            )
        elif m.precopy_seconds is not None:
            rows.append(
                (
                    "  of which pre-copy (modelled)",
                    f"{m.precopy_seconds:.0f} s",
                    "the virt-handler player's migration model, 1 GiB guest, 1 s resolution",
                )
            )
        rows.append(("break -> VM-B compliant again", seconds(m.t_compliant - m.t_break), ""))
        rows.append(("heal -> node verified again", seconds(m.t_healed - m.t_heal), ""))
        for what, value, note in rows:
            tl.plain(f"  {what:<40}{value:>9}   {note}".rstrip())


def _migrates(vmi: str) -> Callable[[Seen], bool]:
    return lambda seen: seen.obj["spec"].get("vmiName") == vmi


def _not_compliant(svm: str) -> Callable[[Seen], bool]:
    return lambda seen: seen.name == svm and not is_true(seen.obj, ConditionType.COMPLIANT)


def _first_check(message: str) -> str:
    """The verdict message names every failed check; the first one is the story's."""
    return message.split("; ")[0]


# ---- endings -----------------------------------------------------------------------------------


def report_failure(failed: DemoFailed, cluster: LocalCluster | None, tl: Timeline) -> None:
    out = tl.out
    print(f"\nsodctl sandbox demo FAILED while {failed.step}:\n  {failed.detail}", file=out)
    if cluster is not None:
        for name in failed.logs:
            path = cluster.log_dir / f"{name}.log"
            lines = tail_file(path, 6000).splitlines()[-30:]
            print(f"\n--- last lines of {path} ---", file=out)
            print("\n".join(lines), file=out)
        print(
            f"\nThe sandbox is left running for inspection (logs in {cluster.log_dir}); "
            "stop it with `make demo-down`.",
            file=out,
        )
    out.flush()


def _command(name: str) -> str:
    """How the user can call our console script `name` from their shell."""
    script = Path(sys.executable).with_name(name)
    if shutil.which(name) == str(script) or not script.exists():
        return name
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(script)
        if not rel.startswith(".."):
            return rel
    return str(script)


def next_steps(cluster: LocalCluster, options: DemoOptions, story: Story, tl: Timeline) -> None:
    sodctl = _command("sodctl")
    try:
        kubectl = str(find_binaries().kubectl)
    except MissingBinaries:
        kubectl = "kubectl"
    other = story.measured.target_node or "hyperwall-2"
    lines = [
        (f"export KUBECONFIG=$({sodctl} sandbox kubeconfig)", f"= {cluster.kubeconfig}"),
        (f"alias kubectl={kubectl}", "the kubectl built for the sandbox"),
        ("kubectl get svm -A", "SecureVMs: node, justifying profile, Ready"),
        ("kubectl get natt", "the verifier's verdict per node"),
        ("kubectl get nodes -L sod.dev/simulated-architecture", ""),
        (f"{sodctl} explain svm {MOVER} -n {options.namespace}", "why VM-B runs where it runs"),
        (f"{sodctl} sandbox break {other} --how pcr", "break a node: violation | pcr | silence"),
        (f"{sodctl} sandbox heal {other}", ""),
        ("make demo-down", f"stop everything (= {sodctl} sandbox down)"),
    ]
    tl.plain("\nThe sandbox keeps running. Try:")
    width = max(len(c) for c, _ in lines) + 2
    for command, note in lines:
        tl.plain(f"  {command:<{width}}{'# ' + note if note else ''}".rstrip())


__all__ = [
    "DEFAULT_NODES",
    "DemoFailed",
    "DemoOptions",
    "SandboxHooks",
    "add_arguments",
    "options_from",
    "run",
]
