"""Scale (issue 15, item 4): what one trust change costs as the *affected set* grows (1, 10,
100, 1,000 SecureVMs) and as the fleet grows (1,000 and 5,000 SecureVMs in the sandbox,
20,000 in process), per affected VM and per fleet VM, against a full-scan baseline.

Not flat by construction: the revoked nodes hold exactly the affected count. The fleet is laid
out in *nested node groups* (`layout`): group `g1` holds 1 SecureVM, `g10` 9 more, `g100` 90
more, `g1000` 900 more, each group one node; the rest of the fleet is on `bulk` nodes.
Revoking the nodes of `g1` .. `gA` affects exactly A SecureVMs. Every SecureVM's own affinity
admits only its group and the `haven` node, verified during the trials only: the affected VMs
migrate to it, and after each trial they are sent back (the haven is revoked in turn), so every
trial starts from the same layout.

* **in the sandbox** (real kube-apiserver, virt-controller, virt-api, the virt-handler player,
  `sod-operator` as a process): revocation -> the operator's decision covers every affected
  SecureVM (each one's status observed without a compliant node profile: relocating now, or
  waiting for a migration slot), and -> the migrations it may start at once exist (KubeVirt's
  limits, `RelocationSettings`: 5 per cluster, 2 out of a node; the rest are created one by one
  as migrations finish, which is KubeVirt's pace, not the operator's); the operator's CPU over
  each window, from /proc.
* **in process** (the operator's `World` and `plan_batch`, no cluster): the same revocations on
  a world built through the operator's own `Controller.observe` from the sandbox's bodies,
  copied onto the same layout up to 20,000 SecureVMs: the operator's way (the node ->
  SecureVMs index, then `plan_batch` on the affected) against a full scan (`plan_batch` on
  every SecureVM on each trust change, as a periodic loop does) with `NodeSnapshot.eligible`
  memoized per (satisfying profiles, tenant terms, launcher constraints): the known hot spot of
  a naive full pass removed, so the baseline is what a careful implementation would do. Both
  must decide the same migrations.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import deps, testbed
from bench.reaction import HIGH, LOW, REQUIRED
from bench.stats import Figure, Result

NAME = "scale"
TITLE = "Scale"

GROUP_LABEL = "bench.sod.dev/group"
HAVEN = "haven"
BULK = "bulk"
NAMESPACE = "fleet"
ARCH = "hyperwall"
AFFECTED = (1, 10, 100, 1000)
QUICK_AFFECTED = (1, 10, 40)
CLUSTER_FLEETS = (1000, 5000)
QUICK_CLUSTER_FLEETS = (60, 120)
PROCESS_FLEETS = (1000, 5000, 20000)
QUICK_PROCESS_FLEETS = (1000, 3000)
BULK_NODES = 20
LARGE_FLEET = 5000
"""In process, fleets above this get one planning trial fewer (a full scan takes seconds)."""
BUDGET_S = 330.0
"""Wall-clock share of the sandbox part, cluster start-up included. Past it, each affected-set
size gets one trial only; a fleet step started past it gets `MIN_STEP_S` to converge (the
first gets up to `FIRST_STEP_S`: without it there is no sandbox row at all). The in-process
part (worlds of 1,000, 5,000 and 20,000 SecureVMs) comes on top. Most of the sandbox time is
the first step's convergence (the convergence table shows each process's CPU over it, so
which one limits it): expect the whole benchmark to take 10 to 15 minutes on a
quiet 2-core machine (an estimate from --quick runs; a full run's `duration_s` says)."""
MIN_STEP_S = 60.0
FIRST_STEP_S = 600.0
SANDBOX_TRIALS = 3
QUICK_SANDBOX_TRIALS = 2
QUICK_BUDGET_S = 300.0
TRIAL_TIMEOUT_S = 240.0


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/unit/test_bench_scale.py)


def group_name(size: int) -> str:
    return f"g{size}"


def layout(fleet: int, affected: Sequence[int]) -> dict[str, int]:
    """SecureVMs per node group: nested groups so that revoking `g1` .. `gA` affects exactly A
    (only the sizes <= `fleet`); the rest of the fleet in `bulk`."""
    out: dict[str, int] = {}
    held = 0
    for size in sorted(affected):
        if size > fleet:
            break
        out[group_name(size)] = size - held
        held = size
    out[BULK] = fleet - held
    return out


def assign(fleet: int, affected: Sequence[int]) -> list[str]:
    """The group of each SecureVM index (stable as the fleet grows: index i keeps its group)."""
    out: list[str] = []
    for group, count in layout(fleet, affected).items():
        out += [group] * count
    return out


def revoked_groups(size: int, affected: Sequence[int]) -> list[str]:
    """The groups whose nodes are revoked to affect `size` SecureVMs."""
    if size not in affected:
        raise ValueError(f"{size} is not one of the affected-set sizes {list(affected)}")
    return [group_name(s) for s in sorted(affected) if s <= size]


def first_wave(per_node: Iterable[int], cluster_limit: int, node_limit: int) -> int:
    """How many migrations the operator may start at once when nodes holding `per_node`
    affected VMs are revoked and none is in flight (`policy.fleet.allocate`'s limits)."""
    return min(cluster_limit, sum(min(n, node_limit) for n in per_node))


def group_affinity(group: str) -> dict[str, Any]:
    """The tenant's own affinity of a SecureVM of `group`: its group's nodes or the haven."""
    expr = {"key": GROUP_LABEL, "operator": "In", "values": sorted({group, HAVEN})}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expr]}]
            }
        }
    }


def replace_strings(obj: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of a JSON value with every string equal to a key of `mapping` replaced."""
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    if isinstance(obj, list):
        return [replace_strings(x, mapping) for x in obj]
    if isinstance(obj, dict):
        return {k: replace_strings(v, mapping) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class Cost:
    """One revocation's cost: wall ms and CPU ms for `affected` VMs in a fleet of `fleet`."""

    where: str
    fleet: int
    affected: int
    wall_ms: list[float]
    cpu_ms: list[float]
    nodes: int = 1
    wave_ms: list[float] = field(default_factory=list)
    wave: int = 0
    full_ms: list[float] = field(default_factory=list)
    full_cpu_ms: list[float] = field(default_factory=list)

    def row(self) -> list[Any]:
        """The table row: medians, and each per affected VM (ms) and per fleet VM (us)."""
        wall, cpu = statistics.median(self.wall_ms), statistics.median(self.cpu_ms)
        full = statistics.median(self.full_ms) if self.full_ms else None
        full_cpu = statistics.median(self.full_cpu_ms) if self.full_cpu_ms else None
        wave = statistics.median(self.wave_ms) if self.wave_ms else None
        return [
            self.where,
            f"{self.fleet:,}",
            f"{self.affected:,}",
            self.nodes,
            len(self.wall_ms),
            wall,
            cpu,
            wall / self.affected,
            cpu / self.affected,
            cpu * 1000 / self.fleet,
            f"{self.wave} in {wave:.1f} ms" if wave is not None else "-",
            full if full is not None else "-",
            full_cpu * 1000 / self.fleet if full_cpu is not None else "-",
            full_cpu / cpu if full_cpu is not None and cpu > 0 else "-",
        ]


COST_COLUMNS = [
    "where",
    "fleet SecureVMs",
    "affected SecureVMs",
    "revoked nodes",
    "n",
    "revocation -> decision covers all affected ms",
    "operator CPU ms",
    "per affected VM: wall ms",
    "per affected VM: CPU ms",
    "per fleet VM: CPU us",
    "first migrations created (KubeVirt's limits)",
    "full scan: wall ms",
    "full scan per fleet VM: CPU us",
    "full scan CPU / ours",
]


# ---------------------------------------------------------------------------------------------
# In process: the operator's World and planner on a world grown from the sandbox's bodies


_MEMO: dict[str, Any] = {}


def memo_snapshot(snapshot: Any) -> Any:
    """`snapshot` as a full pass written with care would use it: `eligible` memoized per
    (satisfying profiles, tenant terms, launcher constraints) for the whole pass (the
    operator's own snapshot caches only SecureVMs without tenant terms or launcher
    constraints: the `eligible` hot spot of bench/optimizations.py)."""
    from dataclasses import dataclass, fields

    from sod_operator.policy.plan import NodeSnapshot

    cls = _MEMO.get("cls")
    if cls is None:

        @dataclass(frozen=True)
        class MemoSnapshot(NodeSnapshot):
            def eligible(self, satisfying: Any, tenant_terms: Any, *launcher: Any) -> Any:
                key = (tuple(satisfying), repr(tenant_terms), repr(launcher))
                memo: dict[Any, Any] = self._eligible
                if key not in memo:
                    memo[key] = tuple(
                        NodeSnapshot.eligible(self, satisfying, tenant_terms, *launcher)
                    )
                return list(memo[key])

        cls = _MEMO["cls"] = MemoSnapshot
    return cls(
        **{f.name: getattr(snapshot, f.name) for f in fields(snapshot) if f.name != "_eligible"}
    )


@dataclass
class Bodies:
    """What the in-process world is built from: the sandbox's own objects."""

    cluster: list[tuple[Any, dict[str, Any]]]
    """(Kind, body) of nodes, profiles, packages."""
    templates: dict[str, dict[Any, list[dict[str, Any]]]]
    """Request ("high"/"low") -> Kind -> bodies of one SecureVM of `g<largest>` that never
    migrated: its SecureVM, VM, VMI and launcher pods."""
    group_of_template: str


def _template_bodies(api: Any, group: str) -> dict[str, dict[Any, list[dict[str, Any]]]]:
    from sod_operator.adapters.controller import Kind
    from sod_testbed.kubeapi import resource_path

    paths = {
        Kind.SECUREVM: resource_path("sod.dev/v1alpha1", "securevms", namespace=NAMESPACE),
        Kind.VM: resource_path(testbed.KUBEVIRT, "virtualmachines", namespace=NAMESPACE),
        Kind.VMI: resource_path(testbed.KUBEVIRT, "virtualmachineinstances", namespace=NAMESPACE),
    }
    items = {k: {o["metadata"]["name"]: o for o in api.list(p)["items"]} for k, p in paths.items()}
    pods = api.list(resource_path("v1", "pods", namespace=NAMESPACE), "kubevirt.io=virt-launcher")
    out: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for name, vmi in sorted(items[Kind.VMI].items()):
        st = vmi.get("status") or {}
        node = st.get("nodeName") or ""
        if st.get("migrationState") or node != group_node(group) or name not in items[Kind.VM]:
            continue
        svm = items[Kind.SECUREVM].get(name)
        if svm is None:
            continue
        kind = "high" if len(svm["spec"]["security"].get("options", [])) > 1 else "low"
        if kind in out:
            continue
        uid = vmi["metadata"]["uid"]
        out[kind] = {
            Kind.SECUREVM: [svm],
            Kind.VM: [items[Kind.VM][name]],
            Kind.VMI: [vmi],
            Kind.POD: [
                p
                for p in pods["items"]
                if p["metadata"]["labels"].get("kubevirt.io/created-by") == uid
            ],
        }
    if set(out) != {"high", "low"}:
        raise RuntimeError(f"no unmigrated SecureVM of each request kind on {group}: {sorted(out)}")
    return out


def snapshot_bodies(bed: Any, group: str) -> Bodies:
    from sod_operator.adapters.controller import Kind
    from sod_testbed.kubeapi import resource_path

    cluster: list[tuple[Any, dict[str, Any]]] = []
    for kind, path in (
        (Kind.NODE, resource_path("v1", "nodes")),
        (Kind.PROFILE, resource_path("sod.dev/v1alpha1", "serversecurityprofiles")),
        (Kind.PACKAGE, resource_path("sod.dev/v1alpha1", "securitypackages")),
    ):
        cluster += [(kind, o) for o in bed.api.list(path).get("items", [])]
    return Bodies(cluster, _template_bodies(bed.api, group), group)


def clone(
    template: dict[Any, list[dict[str, Any]]], name: str, node: str, strings: Mapping[str, str]
) -> list[tuple[Any, dict[str, Any]]]:
    """The template's SecureVM, VM, VMI and launcher pods renamed to `name`, on `node`, with
    `strings` replaced (its group in the affinity), new uids and owner references: (Kind, body)
    in the order the operator's watches would deliver them."""
    from sod_operator.adapters.controller import Kind
    from sod_operator.api.constants import SECUREVM_LABEL

    svm, vm, vmi = (
        replace_strings(template[k][0], strings) for k in (Kind.SECUREVM, Kind.VM, Kind.VMI)
    )
    uids = {k: str(uuid.uuid4()) for k in ("svm", "vm", "vmi")}
    for body, uid in ((svm, uids["svm"]), (vm, uids["vm"]), (vmi, uids["vmi"])):
        body["metadata"].update(name=name, uid=uid)
    for body, kind, owner in ((vm, "SecureVM", "svm"), (vmi, "VirtualMachine", "vm")):
        for ref in body["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == kind:
                ref.update(name=name, uid=uids[owner])
    labels = vm["metadata"].setdefault("labels", {})
    if SECUREVM_LABEL in labels:
        labels[SECUREVM_LABEL] = name
    vmi["metadata"].setdefault("labels", {})["kubevirt.io/nodeName"] = node
    vmi.setdefault("status", {})["nodeName"] = node
    out: list[tuple[Any, dict[str, Any]]] = [(Kind.VM, vm), (Kind.VMI, vmi)]
    for i, pod in enumerate(template.get(Kind.POD, [])):
        p2 = copy.deepcopy(pod)
        p2["metadata"].update(name=f"virt-launcher-{name}-{i}", uid=str(uuid.uuid4()))
        p2["metadata"]["labels"]["kubevirt.io/created-by"] = uids["vmi"]
        p2["spec"]["nodeName"] = node
        out.append((Kind.POD, p2))
    out.append((Kind.SECUREVM, svm))
    return out


def build_world(bodies: Bodies, fleet: int, affected: Sequence[int]) -> Any:
    """A Controller (never started) whose world holds `fleet` SecureVMs on `layout`."""
    from sod_operator.adapters.controller import Controller, Kind
    from sod_operator.adapters.metrics import Metrics
    from sod_operator.kube import EventRecorder
    from sod_operator.policy.settings import RelocationSettings

    controller = Controller(
        None,  # type: ignore[arg-type]  # observe() never talks to the API
        RelocationSettings(),
        Metrics(),
        EventRecorder(None, "bench"),  # type: ignore[arg-type]
    )
    for kind, body in bodies.cluster:
        controller.observe(kind, body)
    nodes = [b["metadata"]["name"] for k, b in bodies.cluster if k is Kind.NODE]
    bulk = sorted(n for n in nodes if n.startswith(f"{BULK}-"))
    for i, group in enumerate(assign(fleet, affected)):
        node = bulk[i % len(bulk)] if group == BULK else group_node(group)
        template = bodies.templates["high" if i % 2 else "low"]
        strings = {bodies.group_of_template: group}
        for kind, body in clone(template, f"svm-{i:05d}", node, strings):
            controller.observe(kind, body)
    return controller


def group_node(group: str) -> str:
    return f"{group}-node"


def plan_revocation(
    controller: Any, nodes: Sequence[str], trials: int
) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Revoke `nodes` in the world `trials` times (after one warm-up): the operator's way and
    the full scan. Returns (ours ms, ours CPU ms, full ms, full CPU ms, SecureVMs affected)."""
    from sod_operator.api.constants import PROFILE_LABEL_PREFIX
    from sod_operator.policy.fleet import plan_batch

    world, cfg = controller.world, controller.settings
    labels = {n: dict(world.nodes[n].labels) for n in nodes}
    revoked = {
        n: {k: v for k, v in ls.items() if not k.startswith(PROFILE_LABEL_PREFIX)}
        for n, ls in labels.items()
    }
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    count = 0

    def ours(now: datetime) -> Any:
        affected: set[Any] = set()
        for n in nodes:
            affected |= world.apply_node(n, revoked[n], True, now)
        snap = world.snapshot(now)
        obs = {k: o for k in affected if (o := world.observation(k, snap)) is not None}
        return plan_batch(obs, world.in_flight(0), cfg, now), len(affected)

    def full(now: datetime) -> Any:
        for n in nodes:
            world.apply_node(n, revoked[n], True, now)
        snap = memo_snapshot(world.snapshot(now))
        obs = {k: o for k in world.all_keys() if (o := world.observation(k, snap)) is not None}
        return plan_batch(obs, world.in_flight(0), cfg, now)

    for trial in range(trials + 1):
        now = datetime.now(UTC)
        (mine, count), w0, c0 = _timed(lambda now=now: ours(now))
        for n in nodes:
            world.apply_node(n, labels[n], True, now)
        if not trial:
            continue  # a warm-up of the operator's way (the full scan warms itself)
        theirs, w1, c1 = _timed(lambda now=now: full(now))
        for n in nodes:
            world.apply_node(n, labels[n], True, now)
        _same_decisions(mine, theirs)
        for series, value in zip(out, (w0, c0, w1, c1), strict=True):
            series.append(value)
    return (*out, count)


def _same_decisions(ours: Any, full: Any) -> None:
    """The full scan must decide what the operator decided: the same slots, the same plans
    for the affected SecureVMs, and no migration for any other."""
    if (ours.granted, sorted(ours.waiting)) != (full.granted, sorted(full.waiting)):
        raise AssertionError("the operator's planning and the full scan granted differently")
    for key, plan in ours.plans.items():
        if plan.status != full.plans[key].status or plan.actions != full.plans[key].actions:
            raise AssertionError(f"the operator's plan for {key} differs from the full scan's")
    for key, plan in full.plans.items():
        if key not in ours.plans and (plan.migrations or plan.slot_request is not None):
            raise AssertionError(f"the full scan migrates {key}, which the operator never saw")


def _timed(fn: Any) -> tuple[Any, float, float]:
    """(result, wall ms, CPU ms of this process) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - w0) * 1000, (time.process_time() - c0) * 1000


def in_process(
    bodies: Bodies,
    fleets: Sequence[int],
    affected: Sequence[int],
    trials: int,
    built: dict[int, float],
) -> list[Cost]:
    """Every affected-set size at every fleet size; `built` gets the seconds each world took to
    build (the operator's start-up folding of a fleet, for the record)."""
    costs: list[Cost] = []
    for fleet in fleets:
        t0 = time.perf_counter()
        controller = build_world(bodies, fleet, affected)
        built[fleet] = time.perf_counter() - t0
        for size in (s for s in affected if s <= fleet):
            nodes = [group_node(g) for g in revoked_groups(size, affected)]
            # A full scan of 20,000 takes seconds: one trial fewer there, to bound the run.
            here = trials if fleet <= LARGE_FLEET else max(2, trials - 1)
            ours, ours_cpu, full, full_cpu, count = plan_revocation(controller, nodes, here)
            if count != size:
                raise AssertionError(f"revoking {nodes} affected {count}, not {size}")
            costs.append(
                Cost(
                    "in process",
                    fleet,
                    count,
                    ours,
                    ours_cpu,
                    len(nodes),
                    full_ms=full,
                    full_cpu_ms=full_cpu,
                )
            )
        del controller
    return costs


# ---------------------------------------------------------------------------------------------
# In the sandbox


def missing() -> str | None:
    return deps.reason(REQUIRED, testbed=True)


def _nodes(fleets: Sequence[int], affected: Sequence[int]) -> list[Any]:
    """One node per group (room for its SecureVMs), the haven, and the bulk nodes."""
    from sod_testbed.nodes import NodeSpec

    groups = layout(max(fleets), affected)
    bulk = groups.pop(BULK)

    def node(name: str, group: str, pods: int) -> Any:
        return NodeSpec(
            name=name,
            architecture=ARCH,
            labels={GROUP_LABEL: group},
            pods=str(pods),
            cpu=str(max(32, pods)),
            memory=f"{max(256, pods)}Gi",
        )

    out = [node(group_node(g), g, n + 20) for g, n in groups.items()]
    out.append(node(group_node(HAVEN), HAVEN, 40))
    per_bulk = -(-bulk * 3 // (2 * BULK_NODES)) + 20  # room for the scheduler's imbalance
    out += [node(f"{BULK}-{i:02d}", BULK, per_bulk) for i in range(BULK_NODES)]
    return out


def _svm_state(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    st = obj.get("status") or {}
    return st.get("nodeName"), st.get("nodeProfile")


def _create(bed: Any, groups: Sequence[str], start: int, stop: int) -> float:
    """Create SecureVMs start..stop-1 (index i in group groups[i]) with 4 client threads."""
    from sod_testbed.kubeapi import KubeApi

    apis = [KubeApi(bed.cluster.kubeconfig) for _ in range(4)]

    def one(i: int) -> None:
        bed.create_securevm(
            NAMESPACE,
            f"svm-{i:05d}",
            HIGH if i % 2 else LOW,
            memory="256Mi",
            affinity=group_affinity(groups[i]),
            api=apis[i % 4],
        )

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(start, stop)))
    return time.perf_counter() - t0


def _placed(count: int) -> Any:
    def done(w: Any) -> bool:
        return sum(1 for node, profile in w.objects.values() if node and profile) >= count

    return done


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def tree_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process and its live descendants: virt-controller
    runs under a restart loop (`/bin/sh -c 'while :; do ...'`), the binary is its child."""
    cpu, rss = 0.0, 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            c, r = testbed.process_usage(p)
            todo += _children(p)
        except OSError:
            continue
        cpu, rss = cpu + c, rss + r / 2**20
    return cpu, rss


def _usage(bed: Any) -> dict[str, tuple[float, float]]:
    """(CPU seconds so far, peak RSS MiB) of each control-plane process and the operator, and
    of this process (the virt-handler player's threads and the benchmark's watches)."""
    out: dict[str, tuple[float, float]] = {}
    for name, proc in bed.cluster.processes.items():
        if proc.alive():
            key = "sod-operator" if name.startswith("operator") else name
            out[key] = tree_usage(proc.record.pid)
    cpu, rss = testbed.process_usage(os.getpid())
    out["benchmark + virt-handler player"] = (cpu, rss / 2**20)
    return out


def _converge(bed: Any, watch: Any, total: int, timeout: float) -> tuple[float, int]:
    """Wait until `total` SecureVMs are placed (or `timeout`): (seconds, how many were)."""
    t0 = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        watch.wait(_placed(total), timeout, f"{total} SecureVMs placed")
    with watch.changed:
        placed = sum(1 for node, profile in watch.objects.values() if node and profile)
    return time.perf_counter() - t0, placed


@dataclass
class Step:
    """One fleet size's initial convergence in the sandbox, as measured."""

    fleet: int
    create_s: float
    converge_s: float
    placed: int
    usage: dict[str, tuple[float, float]]
    """Process -> (CPU seconds over the convergence, peak RSS MiB at its end)."""

    def reason(self, previous: int) -> str:
        """Why this size did not complete, from what was measured."""
        rate = (self.placed - previous) / self.converge_s if self.converge_s else 0.0
        busy = sorted(self.usage.items(), key=lambda kv: -kv[1][0])[:4]
        cpu = sum(c for c, _ in self.usage.values())
        left = (self.fleet - self.placed) / rate if rate > 0 else float("inf")
        return (
            f"{self.placed:,} of {self.fleet:,} SecureVMs placed when this benchmark's budget "
            f"ran out, {self.converge_s:.0f} s after the operator started ({rate:.1f} placed/s;"
            f" the rest would take ~{left:.0f} s more at that rate). CPU seconds over that "
            f"window: {cpu:.0f} in all on {os.cpu_count()} cores ("
            + ", ".join(f"{n} {c:.0f} s, peak RSS {r:.0f} MiB" for n, (c, r) in busy)
            + ")"
        )


def _grow(
    bed: Any, watch: Any, groups: Sequence[str], have: int, fleet: int, timeout: float
) -> Step:
    """Create SecureVMs have..fleet-1 with the operator stopped, then start a fresh operator
    and time it until all are placed (or `timeout`); the CPU of every process meanwhile."""
    create_s = _create(bed, groups, have, fleet)
    before = _usage(bed)
    bed.start_operator(name=f"operator-{fleet}")
    converge_s, placed = _converge(bed, watch, fleet, timeout)
    after = _usage(bed)
    usage = {n: (c - before.get(n, (0.0, 0.0))[0], r) for n, (c, r) in after.items()}
    return Step(fleet, create_s, converge_s, placed, usage)


def _on(bed: Any, nodes: set[str]) -> dict[str, str]:
    """Fleet VMI name -> node, for the running VMIs on `nodes`."""
    return {
        v["metadata"]["name"]: v["status"]["nodeName"]
        for v in bed.vmis(NAMESPACE)
        if (v.get("status") or {}).get("nodeName") in nodes
    }


def _new_vmims(watch: Any, before: set[Any]) -> list[Any]:
    return [k for k in watch.objects if k not in before and k[0] == NAMESPACE]


def _settle(bed: Any, vmim_watch: Any, before: set[Any], timeout: float) -> None:
    """Wait until every migration created since `before` has finished, for a second."""
    deadline, quiet_since = time.monotonic() + timeout, None
    while True:
        with vmim_watch.changed:
            new = [vmim_watch.objects[k] for k in _new_vmims(vmim_watch, before)]
        done = all((o.get("status") or {}).get("phase") in ("Succeeded", "Failed") for o in new)
        now = time.monotonic()
        quiet_since = (quiet_since or now) if done else None
        if quiet_since is not None and now - quiet_since >= 1.0:
            return
        if now > deadline:
            raise TimeoutError(f"migrations still running after {timeout:.0f} s")
        time.sleep(0.2)


def _restore(
    bed: Any,
    watches: tuple[Any, Any],
    nodes: Sequence[str],
    before: set[Any],
    total: int,
    timeout: float,
) -> None:
    """Trust the revoked nodes again; send the VMs that reached the haven back to their own
    group (the haven is revoked, their affinity admits only their group's node); re-trust it."""
    svm_watch, vmim_watch = watches
    haven = group_node(HAVEN)
    for n in nodes:
        bed.set_verified(n, [ARCH])
    _settle(bed, vmim_watch, before, timeout)
    if _on(bed, {haven}):
        bed.set_verified(haven, [ARCH], verified=False)
        deadline = time.monotonic() + timeout
        while _on(bed, {haven}):
            if time.monotonic() > deadline:
                raise TimeoutError(f"VMs still on {haven} after {timeout:.0f} s")
            time.sleep(0.2)
        _settle(bed, vmim_watch, before, timeout)
        bed.set_verified(haven, [ARCH])
    svm_watch.wait(_placed(total), timeout, f"{total} SecureVMs placed again")


def _trial(
    bed: Any, watches: tuple[Any, Any], nodes: Sequence[str], size: int, fleet: int, cfg: Any
) -> tuple[float, float, float, int]:
    """Revoke `nodes` (holding `size` SecureVMs); (ms until every affected SecureVM's status
    carries the decision, operator CPU ms meanwhile, ms until the first wave of migrations
    exists, its size); then restore the layout."""
    svm_watch, vmim_watch = watches
    where = _on(bed, set(nodes))
    if len(where) != size:
        raise RuntimeError(f"{nodes} hold {len(where)} SecureVMs, not {size}")
    keys = {(NAMESPACE, name) for name in where}
    per_node: dict[str, int] = {}
    for node in where.values():
        per_node[node] = per_node.get(node, 0) + 1
    wave = first_wave(per_node.values(), cfg.max_migrations_per_cluster, cfg.max_outbound_per_node)
    with vmim_watch.changed:
        before = set(vmim_watch.objects)
    assert bed.operator is not None
    c0 = bed.operator.usage()[0]
    t0 = time.perf_counter()
    for n in nodes:
        bed.set_verified(n, [ARCH], verified=False)

    def decided(w: Any) -> bool:
        return all(not (w.objects.get(k) or (None, None))[1] for k in keys)

    svm_watch.wait(decided, TRIAL_TIMEOUT_S, f"the decision on {size} SecureVMs")
    t1 = time.perf_counter()
    c1 = bed.operator.usage()[0]

    def created(w: Any) -> Any:
        new = _new_vmims(w, before)
        return max(w.seen[k] for k in new) if len(new) >= wave else None

    t2 = vmim_watch.wait(created, TRIAL_TIMEOUT_S, f"the first {wave} migrations")
    _restore(bed, watches, nodes, before, fleet, TRIAL_TIMEOUT_S)
    return (t1 - t0) * 1000, (c1 - c0) * 1000, (t2 - t0) * 1000, wave


def _trials(
    bed: Any,
    watches: tuple[Any, Any],
    fleet: int,
    affected: Sequence[int],
    trials: int,
    deadline: float,
) -> tuple[list[Cost], dict[str, str]]:
    """Each affected-set size <= `fleet`, `trials` times (fewer once past `deadline`, at
    least once each); the haven is trusted meanwhile."""
    from sod_operator.policy.settings import RelocationSettings

    cfg = RelocationSettings()  # what `sod-operator` runs with (no flag changes them here)
    haven = group_node(HAVEN)
    bed.set_verified(haven, [ARCH])
    costs: list[Cost] = []
    cut: dict[str, str] = {}
    for size in (s for s in affected if s <= fleet):
        nodes = [group_node(g) for g in revoked_groups(size, affected)]
        samples: list[tuple[float, float, float, int]] = []
        for i in range(trials):
            if i and time.monotonic() > deadline:
                cut[f"trials {i + 1}-{trials} of {size:,} affected at {fleet:,}"] = (
                    "past this benchmark's time budget"
                )
                break
            samples.append(_trial(bed, watches, nodes, size, fleet, cfg))
        costs.append(
            Cost(
                "sandbox",
                fleet,
                size,
                [s[0] for s in samples],
                [s[1] for s in samples],
                len(nodes),
                wave_ms=[s[2] for s in samples],
                wave=samples[0][3],
            )
        )
    bed.set_verified(haven, [ARCH], verified=False)
    return costs, cut


# ---------------------------------------------------------------------------------------------
# The benchmark


def _sandbox(
    quick: bool, affected: Sequence[int], result: Result
) -> tuple[list[Step], list[Cost], Bodies]:
    from sod_testbed.handler_player import PlayerConfig
    from sod_testbed.kubeapi import resource_path

    fleets = QUICK_CLUSTER_FLEETS if quick else CLUSTER_FLEETS
    budget = QUICK_BUDGET_S if quick else BUDGET_S
    trials = QUICK_SANDBOX_TRIALS if quick else SANDBOX_TRIALS
    deadline = time.monotonic() + budget
    nodes = _nodes(fleets, affected)
    groups = assign(max(fleets), affected)
    steps: list[Step] = []
    costs: list[Cost] = []
    bodies: Bodies | None = None
    with testbed.sandbox(nodes, PlayerConfig(time_scale=0.02, resync_seconds=30.0), NAME) as bed:
        for n in nodes:
            if n.labels[GROUP_LABEL] != HAVEN:
                bed.set_verified(n.name, [ARCH])
        bed.namespace(NAMESPACE)
        svm_watch = testbed.ObjectWatch(
            bed.cluster.kubeconfig,
            resource_path("sod.dev/v1alpha1", "securevms"),
            reduce=_svm_state,
        ).start()
        vmim_watch = testbed.migration_watch(bed.cluster.kubeconfig).start()
        try:
            have = 0
            for fleet in fleets:
                floor = MIN_STEP_S if steps else FIRST_STEP_S
                left = max(deadline - time.monotonic(), floor)
                step = _grow(bed, svm_watch, groups, have, fleet, left)
                steps.append(step)
                if bodies is None:  # the in-process part needs them even if this step failed
                    largest = max(s for s in affected if s <= fleet)
                    with contextlib.suppress(RuntimeError):
                        bodies = snapshot_bodies(bed, group_name(largest))
                if step.placed < fleet:
                    result.not_run[f"{fleet:,} SecureVMs in the sandbox"] = step.reason(have)
                    break
                watches = (svm_watch, vmim_watch)
                done, cut = _trials(bed, watches, fleet, affected, trials, deadline)
                costs += done
                result.not_run.update(cut)
                bed.stop_operator()
                have = fleet
        finally:
            svm_watch.stop()
            vmim_watch.stop()
    if bodies is None:
        raise RuntimeError(f"no SecureVM to copy for the in-process part: {result.not_run}")
    return steps, costs, bodies


def run(quick: bool = False) -> Result:
    affected = QUICK_AFFECTED if quick else AFFECTED
    process_fleets = QUICK_PROCESS_FLEETS if quick else PROCESS_FLEETS
    process_trials = 3
    result = Result(name=NAME, title=TITLE)
    steps, sandbox_costs, bodies = _sandbox(quick, affected, result)
    built: dict[int, float] = {}
    t0 = time.perf_counter()
    process_costs = in_process(bodies, process_fleets, affected, process_trials, built)
    process_s = time.perf_counter() - t0
    costs = sorted(sandbox_costs + process_costs, key=lambda c: (c.where, c.fleet, c.affected))
    result.add_table(
        "Revocation cost by affected-set size x fleet size (medians)",
        COST_COLUMNS,
        [c.row() for c in costs]
        + missing_rows(
            QUICK_CLUSTER_FLEETS if quick else CLUSTER_FLEETS,
            {c.fleet for c in sandbox_costs},
            affected,
        ),
        note=COST_NOTE,
    )
    _steps_table(result, steps)
    for c in costs:
        result.figures.append(_figure(c))
    result.notes += _flatness(process_costs) + _per_vm(process_costs)
    result.params = {
        "affected_sizes": list(affected),
        "sandbox_fleets": [s.fleet for s in steps if s.placed >= s.fleet],
        "in_process_fleets": list(process_fleets),
        "sandbox_budget_s": QUICK_BUDGET_S if quick else BUDGET_S,
        "in_process_trials": process_trials,
        "layout": layout(max(process_fleets), affected),
        "in_process_world_build_s": {f: round(s, 1) for f, s in built.items()},
        "in_process_total_s": round(process_s, 1),
    }
    sandbox_trials = QUICK_SANDBOX_TRIALS if quick else SANDBOX_TRIALS
    result.method = _method(affected, steps, process_fleets, process_trials, sandbox_trials)
    return result


def missing_rows(fleets: Sequence[int], reached: set[int], affected: Sequence[int]) -> list[Any]:
    """A row per sandbox fleet size that was not reached, so the table shows the gap."""
    blank = ["-"] * (len(COST_COLUMNS) - 5)
    return [
        [
            "sandbox: not run (see Not run above)",
            f"{f:,}",
            ", ".join(f"{s:,}" for s in affected if s <= f),
            "-",
            0,
            *blank,
        ]
        for f in fleets
        if f not in reached
    ]


COST_NOTE = (
    "Sandbox: from the first node label patch (the verifier's revocation) until every affected "
    "SecureVM's status is observed without a compliant node profile (each relocating or "
    "waiting for a migration slot: the operator's decision covers all of them); operator CPU "
    "from /proc over the same window. First migrations: the VMIMs KubeVirt's limits let the "
    "operator create at once (5 per cluster, 2 out of a node), until observed; the remaining "
    "affected VMs get theirs one by one as migrations finish, KubeVirt's pace, not measured "
    "here. In process: the operator's index and `plan_batch` over the affected SecureVMs, the "
    "decision without the API round trips; the full scan re-plans every SecureVM of the fleet "
    "with `eligible` memoized (same decisions, checked). Per fleet VM: CPU divided by the "
    "fleet size. /proc counts CPU in clock ticks of "
    f"{1000 / testbed.CLK_TCK:.0f} ms: a sandbox CPU figure below that reads 0."
)


def _figure(c: Cost) -> Figure:
    where = "sandbox" if c.where == "sandbox" else "process"
    if c.where == "sandbox":
        return Figure(
            id=f"revocation_{where}_{c.fleet}_{c.affected}",
            label=f"revocation -> decision on all {c.affected:,} affected, {c.fleet:,} "
            "SecureVMs (sandbox)",
            unit="ms",
            better="lower",
            samples=c.wall_ms,
            note=f"operator CPU per trial: {', '.join(f'{x:.0f}' for x in c.cpu_ms)} ms; first "
            f"{c.wave} migrations created after {', '.join(f'{x:.0f}' for x in c.wave_ms)} ms",
        )
    return Figure(
        id=f"revocation_{where}_{c.fleet}_{c.affected}",
        label=f"planning a revocation of {c.affected:,} affected, {c.fleet:,} SecureVMs "
        "(in process)",
        unit="ms",
        better="lower",
        samples=c.wall_ms,
        baseline_label="full scan of every SecureVM, `eligible` memoized",
        baseline_samples=c.full_ms,
    )


def _steps_table(result: Result, steps: Sequence[Step]) -> None:
    names = sorted({n for s in steps for n in s.usage})
    result.add_table(
        "Sandbox: initial convergence per fleet size, CPU s (peak RSS MiB) by process",
        ["fleet SecureVMs", "placed", "create s (API)", "convergence s", *names],
        [
            [
                f"{s.fleet:,}",
                s.placed,
                s.create_s,
                s.converge_s,
                *[
                    f"{s.usage[n][0]:.1f} ({s.usage[n][1]:.0f})" if n in s.usage else "-"
                    for n in names
                ],
            ]
            for s in steps
        ],
        note="The operator is stopped while the new SecureVMs are created, then a fresh one is "
        "timed until every SecureVM's status names a compliant node; CPU seconds of each "
        "process over that window (a process near the wall time x its usable cores is the "
        "limit), peak RSS at its end.",
    )


def _flatness(costs: Sequence[Cost]) -> list[str]:
    """How the in-process cost grows with the fleet at each affected size (computed)."""
    out = []
    for size in sorted({c.affected for c in costs}):
        row = sorted((c for c in costs if c.affected == size), key=lambda c: c.fleet)
        if len(row) < 2:
            continue
        lo, hi = row[0], row[-1]
        ours = statistics.median(hi.cpu_ms) / max(statistics.median(lo.cpu_ms), 1e-9)
        full = statistics.median(hi.full_cpu_ms) / max(statistics.median(lo.full_cpu_ms), 1e-9)
        out.append(
            f"In process, {size:,} affected: from {lo.fleet:,} to {hi.fleet:,} SecureVMs "
            f"({hi.fleet / lo.fleet:.0f}x the fleet) the operator's CPU per revocation changed "
            f"{ours:.2f}x, the full scan's {full:.1f}x."
        )
    return out


def _per_vm(costs: Sequence[Cost]) -> list[str]:
    """The operator's CPU per affected SecureVM against the full scan's per SecureVM (computed):
    where the first is higher, the operator pays per VM what the memoized baseline does not."""
    if not costs:
        return []
    c = max(costs, key=lambda c: (c.affected, c.fleet))
    ours = statistics.median(c.cpu_ms) / c.affected
    full = statistics.median(c.full_cpu_ms) / c.fleet
    text = (
        f"Per SecureVM planned ({c.affected:,} affected, {c.fleet:,} SecureVMs, in process): "
        f"the operator's way {ours:.3f} ms CPU, the full scan {full:.3f} ms."
    )
    if ours > full:
        text += (
            " Every SecureVM here has a tenant affinity term (its group): the operator's own "
            "snapshot memoizes `eligible` only for SecureVMs without one, the baseline for all "
            "(the open `eligible` finding in the history section)."
        )
    return [text]


def _method(
    affected: Sequence[int],
    steps: Sequence[Step],
    fleets: Sequence[int],
    trials: int,
    sandbox_trials: int,
) -> str:
    reached = ", ".join(f"{s.fleet:,}" for s in steps if s.placed >= s.fleet) or "none"
    return f"""\
Layout: nested node groups, one node each, holding {", ".join(f"{s:,}" for s in affected)}
SecureVMs cumulatively (`{group_name(affected[0])}` .. `{group_name(affected[-1])}`), the rest of
the fleet on {BULK_NODES} `bulk` nodes, every node `{ARCH}`-verified; half the SecureVMs ask for
Basic, half for Basic + HypervisorProtection (256 MiB each). Each SecureVM's own affinity admits
its group and the `haven` node, trusted only during the trials: a revocation of groups
`g1`..`gA` affects exactly A SecureVMs (checked before each trial against the VMIs' nodes), and
after each trial the migrated VMs are sent back (the revoked nodes trusted again, the haven
revoked until they left it), so every trial starts from the same layout.

Sandbox (kwok nodes, real kube-apiserver/etcd/scheduler, KubeVirt v1.9.0 virt-controller and
virt-api, the virt-handler player with migration durations x0.02, `sod-operator` as a process):
fleets reached: {reached}. At each size the operator is stopped, the new SecureVMs are created
(4 client threads) and a fresh operator is timed until all are placed; then each affected-set
size is revoked ({sandbox_trials} trials, fewer once the budget is spent). In process: the
sandbox's own SecureVM, VM, VMI and launcher-pod bodies (one per request kind) copied onto the
same layout at {", ".join(f"{f:,}" for f in fleets)} SecureVMs and folded in through the
operator's `Controller.observe`; each revocation planned {trials} times ({max(2, trials - 1)}
above {LARGE_FLEET:,} SecureVMs; after a warm-up) the operator's way and the full-scan way,
on one planning snapshot as the controller takes it.
"""
