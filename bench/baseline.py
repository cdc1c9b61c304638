"""The real alternative as the reaction baseline (issue 15, item 2): what a platform team builds
today without sod-operator, measured in the same sandbox as the operator's timeline.

* the verifier's labels (`profile.<arch>=verified`, written here by the benchmark as the
  verifier writes them);
* each VM requires them: `spec.template.spec.affinity` with a required node-affinity term,
  which KubeVirt copies to the VMI and renders into the virt-launcher pod;
* the Kubernetes descheduler (`RemovePodsViolatingNodeAffinity`,
  requiredDuringSchedulingIgnoredDuringExecution; sod_testbed.descheduler) evicts a launcher
  pod whose node no longer matches;
* KubeVirt turns the eviction into a live migration: `evictionStrategy: LiveMigrate`, virt-api's
  pods/eviction admitter marks the VMI for evacuation, virt-controller's evacuation controller
  creates the VirtualMachineInstanceMigration.

Two triggers, as in the operator's timeline: trust revoked (the label removed from the node a
VM runs on) and request raised (the tenant edits the VM's affinity to ask for more). Timelines
use bench.timeline's stage names; every time is `time.time()` when the benchmark observed it.

Pure parts (unit-tested): `schedule_moments`, `vm_manifest`, `revocation_timeline`,
`request_outcome`, `figure_matches`. `run_in` is the shell.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.stats import Figure, Result
from bench.timeline import REVOCATION_STAGES, Timeline, span_ms, timeline_table

if TYPE_CHECKING:
    from bench.testbed import Recorder

Json = dict[str, Any]
Event = tuple[float, str, Json]
"""(epoch seconds observed, kind: node|pod|vmi|vmim, object)."""

KUBEVIRT = "kubevirt.io/v1"
HIGH_PROFILE = "hyperwall"
LOW_PROFILE = "tpm-measured-boot"
POOL_LABEL = "bench.sod.dev/pool"
POOL = "baseline"
SPREAD_LABEL = "bench.sod.dev/baseline"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
DEFAULT_INTERVAL = 300.0
"""The descheduler's shipped interval when it runs as a Deployment: `--descheduling-interval
5m` in kubernetes/deployment/deployment.yaml and `deschedulingInterval: 5m` in
charts/descheduler/values.yaml (kubernetes-sigs/descheduler v0.36.0)."""
SHORTEST_INTERVAL = 60.0
"""The shortest interval the descheduler's documentation leads to: its docs put no lower bound
on `--descheduling-interval`; the Helm chart's default kind is a CronJob (`*/2 * * * *`), and
a cron schedule cannot run more often than once a minute; OpenShift Virtualization's page for
descheduling VMs configures `deschedulingIntervalSeconds: 60`."""
STAGES = REVOCATION_STAGES[REVOCATION_STAGES.index("label_removed") :]
"""The revocation stages the baseline observes: it starts where the verifier's label goes."""
TRIAL_COLUMNS = ("evicted", *STAGES[1:])
REVOKE_NS = "baseline-revoke"
RAISE_NS = "baseline-raise"


@dataclass(frozen=True)
class Plan:
    """How much to run. `runs`: (interval seconds, descheduler cycles) in order."""

    runs: tuple[tuple[float, int], ...]
    per_cycle: int
    """VMs (one per node) revoked at random moments within each cycle's interval."""
    raised: int
    seed: int = 15

    @classmethod
    def full(cls) -> Plan:
        # ~8 minutes: one cycle at 5 min (5 samples), 2 at 1 min (10 samples), plus set-up.
        return cls(runs=((DEFAULT_INTERVAL, 1), (SHORTEST_INTERVAL, 2)), per_cycle=5, raised=3)

    @classmethod
    def quick(cls) -> Plan:
        return cls(runs=((SHORTEST_INTERVAL, 1),), per_cycle=2, raised=2)

    def total_seconds(self) -> float:
        return sum(interval * cycles for interval, cycles in self.runs)


# ---- pure decisions -----------------------------------------------------------------------------


def schedule_moments(start: float, end: float, k: int, rng: random.Random) -> list[float]:
    """k moments in [start, end), one uniformly at random in each of k equal strata, so one
    descheduler interval yields k samples spread over its phases."""
    if k <= 0 or end <= start:
        return []
    width = (end - start) / k
    return [start + (i + rng.random()) * width for i in range(k)]


def required_affinity(profile: str) -> Json:
    """The VM's affinity: a node verified for `profile` (and in the benchmark's node pool; a
    constant label that keeps the baseline off the other benchmarks' nodes), preferably not
    next to another baseline VM (so each revoked node holds one VM)."""
    from sod_operator.api.constants import VERIFIED, profile_label

    term = {
        "matchExpressions": [
            {"key": profile_label(profile), "operator": "In", "values": [VERIFIED]},
            {"key": POOL_LABEL, "operator": "In", "values": [POOL]},
        ]
    }
    spread = {
        "weight": 100,
        "podAffinityTerm": {
            "labelSelector": {"matchExpressions": [{"key": SPREAD_LABEL, "operator": "Exists"}]},
            "topologyKey": "kubernetes.io/hostname",
        },
    }
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [spread]},
    }


def vm_manifest(namespace: str, name: str, profile: str) -> Json:
    """A KubeVirt VirtualMachine requiring `profile`, evicted by live migration."""
    from bench.testbed import vm_template

    spec = vm_template(name, affinity=required_affinity(profile))
    spec["template"]["metadata"]["labels"][SPREAD_LABEL] = namespace
    spec["template"]["spec"]["evictionStrategy"] = "LiveMigrate"
    return {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _verified(node: Json, profile: str) -> bool:
    from sod_operator.api.constants import VERIFIED, profile_label

    labels = node["metadata"].get("labels") or {}
    return bool(labels.get(profile_label(profile)) == VERIFIED)


def _first(
    events: Iterable[Event], kind: str, after: float, pred: Any
) -> tuple[float, Json] | None:
    for t, k, obj in events:
        if k == kind and t >= after and pred(obj):
            return t, obj
    return None


def _ns_name(obj: Json) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def migration_stages(
    events: Sequence[Event], namespace: str, vmi: str, after: float
) -> tuple[Timeline, Json]:
    """vmim_created .. vm_running of the first migration of `vmi` created at or after `after`,
    and what KubeVirt itself wrote (VMIM name, its startTimestamp, nodes)."""
    out: Timeline = {}
    info: Json = {}
    found = _first(
        events,
        "vmim",
        after,
        lambda o: _ns_name(o)[0] == namespace and o["spec"].get("vmiName") == vmi,
    )
    if found is None:
        return out, info
    out["vmim_created"], vmim = found
    uid = vmim["metadata"]["uid"]
    info["vmim"] = vmim["metadata"]["name"]
    target = _first(
        events,
        "pod",
        after,
        lambda o: (
            (o["metadata"].get("labels") or {}).get(MIGRATION_JOB_LABEL) == uid
            and bool((o.get("spec") or {}).get("nodeName"))
        ),
    )
    if target is not None:
        out["target_scheduled"] = target[0]
        info["target_node"] = target[1]["spec"]["nodeName"]

    def state(o: Json) -> Json:
        if _ns_name(o) != (namespace, vmi):
            return {}
        s = (o.get("status") or {}).get("migrationState") or {}
        return s if s.get("migrationUid") == uid else {}

    started = _first(events, "vmi", after, lambda o: bool(state(o).get("startTimestamp")))
    if started is not None:
        out["migration_started"] = started[0]
        info["kubevirt_start_timestamp"] = state(started[1])["startTimestamp"]
    running = _first(events, "vmi", after, lambda o: _running_on_target(o, state(o)))
    if running is not None:
        out["vm_running"] = running[0]
    return out, info


def _running_on_target(vmi: Json, state: Json) -> bool:
    status = vmi.get("status") or {}
    return (
        bool(state.get("completed"))
        and not state.get("failed")
        and status.get("phase") == "Running"
        and bool(state.get("targetNode"))
        and status.get("nodeName") == state.get("targetNode")
    )


def revocation_timeline(
    events: Sequence[Event], namespace: str, vmi: str, node: str, revoked_at: float
) -> tuple[Timeline, Json]:
    """The timeline of one revocation: `node`'s label observed gone, then the migration of
    `vmi` (events sorted by time; `revoked_at` = just before the benchmark's patch)."""
    gone = _first(
        events,
        "node",
        revoked_at,
        lambda o: o["metadata"]["name"] == node and not _verified(o, HIGH_PROFILE),
    )
    if gone is None:
        return {}, {}
    timeline, info = migration_stages(events, namespace, vmi, gone[0])
    timeline["label_removed"] = gone[0]
    return timeline, info


def request_outcome(
    events: Sequence[Event], namespace: str, vmi: str, raised_at: float, until: float
) -> tuple[Timeline, Json]:
    """What followed the tenant's affinity edit of `vmi`'s VM within [raised_at, until]: the
    request timeline (request_raised, and the migration stages if any) and observations (when
    the VMI's affinity showed the new profile)."""
    timeline: Timeline = {"request_raised": raised_at}
    stages, info = migration_stages([e for e in events if e[0] <= until], namespace, vmi, raised_at)
    timeline.update(stages)
    copied = _first(
        events,
        "vmi",
        raised_at,
        lambda o: (
            _ns_name(o) == (namespace, vmi) and HIGH_PROFILE in str(o["spec"].get("affinity"))
        ),
    )
    info["vmi_affinity_copied_ms"] = None if copied is None else (copied[0] - raised_at) * 1000
    info["window_s"] = until - raised_at
    return timeline, info


def figure_matches(figure: Figure, start: str, end: str) -> bool:
    """Whether `figure` measures the span start -> end (its id `<start>_to_<end>`, or its label
    naming "start -> end")."""
    return figure.id.endswith(f"{start}_to_{end}") or f"{start} -> {end}" in figure.label


# ---- the shell ----------------------------------------------------------------------------------


def recorder(kubeconfig: Any) -> Recorder:
    """Watches of nodes, pods, VMIs and VMIMs with their history, on the wall clock."""
    from sod_testbed.kubeapi import resource_path

    from bench.testbed import ObjectWatch, Recorder

    kinds = {
        "node": ("v1", "nodes"),
        "pod": ("v1", "pods"),
        "vmi": (KUBEVIRT, "virtualmachineinstances"),
        "vmim": (KUBEVIRT, "virtualmachineinstancemigrations"),
    }
    return Recorder(
        {
            kind: ObjectWatch(kubeconfig, resource_path(*gv), keep_history=True)
            for kind, gv in kinds.items()
        }
    )


@dataclass
class Trial:
    interval: float
    cycle: int
    vm: str
    node: str
    revoked_at: float
    next_cycle: float
    timeline: Timeline = field(default_factory=dict)
    info: Json = field(default_factory=dict)


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 1.0))


def _wait_cycle(desched: Any, count: int, timeout: float) -> float:
    """Start time of the descheduler's cycle number `count` (0-based), from its log."""
    deadline = time.monotonic() + timeout
    while True:
        cycles = desched.log().cycles
        if len(cycles) > count:
            return float(cycles[count].start)
        if not desched.alive():
            raise RuntimeError(f"{desched.name} exited; see {desched.log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{desched.name}: no cycle {count} after {timeout:.0f} s")
        time.sleep(0.2)


def moved(vmi: Json, source: str) -> bool:
    """Whether `vmi` runs off `source` with its migration completed (the last write of it)."""
    status = vmi.get("status") or {}
    state = status.get("migrationState") or {}
    return status.get("nodeName") != source and _running_on_target(vmi, state)


def wait_moved(bed: Any, namespace: str, sources: dict[str, str], deadline: float) -> None:
    """Wait until every VM of `sources` (vm -> node it was revoked on) moved off it."""
    while True:
        done = {
            v["metadata"]["name"]
            for v in bed.vmis(namespace)
            if v["metadata"]["name"] in sources and moved(v, sources[v["metadata"]["name"]])
        }
        if done >= set(sources):
            return
        if time.time() > deadline:
            missing = sorted(set(sources) - done)
            raise TimeoutError(f"baseline: {missing} not migrated off their revoked nodes")
        time.sleep(0.5)


def _revoke_cycle(
    bed: Any,
    rec: Recorder,
    vms: list[str],
    interval: float,
    cycle: int,
    window: tuple[float, float],
    rng: random.Random,
) -> list[Trial]:
    """Revoke each node holding a VM at its own random moment in `window` (the VMs' spread is
    only preferred: VMs sharing a node share its moment); wait until all moved."""
    where = bed.wait_running(REVOKE_NS, vms, 120)
    nodes = sorted(set(where.values()))
    rng.shuffle(nodes)
    start, end = max(window[0], time.time()), window[1]
    while end - start < interval / 2:  # set-up ate this interval: revoke within the next one
        end += interval
    moments = schedule_moments(start, end, len(nodes), rng)
    trials = []
    for node, moment in zip(nodes, moments, strict=True):
        _sleep_until(moment)
        t = time.time()
        bed.set_verified(node, [HIGH_PROFILE], verified=False)
        trials += [Trial(interval, cycle, vm, n, t, end) for vm, n in where.items() if n == node]
    # A revocation the next cycle misses (its informer not yet updated) waits one more.
    wait_moved(bed, REVOKE_NS, {t.vm: t.node for t in trials}, end + interval + 120)
    events = rec.merged()
    for trial in trials:
        trial.timeline, trial.info = revocation_timeline(
            events, REVOKE_NS, trial.vm, trial.node, trial.revoked_at
        )
    for node in nodes:
        bed.set_verified(node, [HIGH_PROFILE])
    return trials


def pool_node(name: str, profile: str, verified: bool = True) -> Any:
    """A kwok node of the baseline's pool (the constant label its VMs require), verified for
    `profile` or not yet."""
    from sod_operator.api.constants import VERIFIED, profile_label
    from sod_testbed.nodes import NodeSpec

    labels = {POOL_LABEL: POOL}
    if verified:
        labels[profile_label(profile)] = VERIFIED
    return NodeSpec(name=name, architecture=profile, labels=labels)


def _pool(plan: Plan) -> list[Any]:
    """The baseline's own kwok nodes: 2 per revoked VM verified for the high profile (a VM's
    node and a free target), 2 verified for the low one (where raised VMs start)."""
    return [
        pool_node(f"baseline-{HIGH_PROFILE}-{i}", HIGH_PROFILE) for i in range(2 * plan.per_cycle)
    ] + [pool_node(f"baseline-{LOW_PROFILE}-{i}", LOW_PROFILE) for i in range(2)]


def check_labels_kept(bed: Any, pool: list[Any]) -> None:
    """The benchmark writes the pool's verdict labels itself; a verifier running in the bed
    removes trust labels from nodes without a NodeAttestation (verifier/controller.py), which
    would make every baseline VM unschedulable or evicted for the wrong reason."""
    for spec in pool:
        have = bed.node_labels(spec.name)
        lost = [k for k, v in spec.labels.items() if have.get(k) != v]
        if lost:
            raise RuntimeError(
                f"baseline: node {spec.name} lost its labels {lost}; is a verifier running in "
                "the bed? The baseline writes the verifier's labels itself and needs none."
            )


def create_vms(bed: Any, namespace: str, names: list[str], profile: str) -> None:
    from sod_testbed.kubeapi import resource_path

    for name in names:
        bed.api.create(
            resource_path(KUBEVIRT, "virtualmachines", namespace=namespace),
            vm_manifest(namespace, name, profile),
        )
    bed.wait_running(namespace, names, 180)


def delete_vms(bed: Any, namespace: str, names: list[str], timeout: float = 120.0) -> None:
    """Delete the VMs and wait until their VMIs are gone (their nodes free for the next run)."""
    from sod_testbed.kubeapi import resource_path

    for name in names:
        bed.api.delete(resource_path(KUBEVIRT, "virtualmachines", namespace=namespace, name=name))
    deadline = time.time() + timeout
    while any(bed.vmi(namespace, name) is not None for name in names):
        if time.time() > deadline:
            raise TimeoutError(f"baseline: VMIs of {names} not deleted within {timeout:g} s")
        time.sleep(0.5)


def _raise(bed: Any, names: list[str]) -> dict[str, float]:
    """The tenant's edit: each VM's affinity now requires the high profile."""
    from sod_testbed.kubeapi import resource_path

    raised = {}
    for name in names:
        raised[name] = time.time()
        bed.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachines", namespace=RAISE_NS, name=name),
            {"spec": {"template": {"spec": {"affinity": required_affinity(HIGH_PROFILE)}}}},
        )
    return raised


def _launcher_affinity_changed(bed: Any) -> dict[str, bool]:
    """Per VMI: whether its running launcher pod's affinity names the high profile."""
    from sod_testbed.kubeapi import resource_path

    pods = bed.api.list(resource_path("v1", "pods", namespace=RAISE_NS)).get("items", [])
    out = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        vmi = (pod["metadata"].get("annotations") or {}).get("kubevirt.io/domain")
        if vmi:
            out[vmi] = HIGH_PROFILE in str((pod.get("spec") or {}).get("affinity"))
    return out


@contextmanager
def running_descheduler(
    bed: Any, name: str, namespaces: Sequence[str], interval: float
) -> Iterator[tuple[Any, float]]:
    """The descheduler running on `namespaces` every `interval` s: yields it (a
    sod_testbed.descheduler.Descheduler, whose log stays readable after the block) and its first
    cycle's start (epoch s, from its log); stopped on exit."""
    from sod_testbed.descheduler import Descheduler

    d = Descheduler(bed.cluster, name, namespaces, interval)
    d.start()
    try:
        yield d, _wait_cycle(d, 0, 120)
    finally:
        d.stop()


@dataclass
class Run:
    interval: float
    trials: list[Trial]
    log: Any  # sod_testbed.descheduler.DeschedulerLog


def _run_interval(
    bed: Any, rec: Recorder, plan: Plan, interval: float, cycles: int, vms: list[str],
    on_first_cycle: Any, rng: random.Random,
) -> Run:  # fmt: skip
    trials: list[Trial] = []
    name, namespaces = f"descheduler-{interval:g}s", [REVOKE_NS, RAISE_NS]
    with running_descheduler(bed, name, namespaces, interval) as (d, t0):
        on_first_cycle()
        for c in range(cycles):
            window = (t0 + c * interval, t0 + (c + 1) * interval)
            trials += _revoke_cycle(bed, rec, vms, interval, c, window, rng)
    log = d.log()
    for trial in trials:
        trial.info["evicted_at"] = evicted_at(log.evictions, trial.vm, trial.revoked_at)
    return Run(interval, trials, log)


def evicted_at(evictions: Sequence[tuple[float, str]], vm: str, after: float) -> float | None:
    """When the descheduler decided to evict `vm`'s launcher pod, at or after `after`."""
    prefix = f"{REVOKE_NS}/virt-launcher-{vm}-"
    return next((t for t, pod in evictions if t >= after and pod.startswith(prefix)), None)


def _cycle_table(result: Result, runs: list[Run]) -> None:
    rows = []
    for run in runs:
        for i, c in enumerate(run.log.cycles):
            dur = None if c.end is None else (c.end - c.start) * 1000
            rows.append([f"{run.interval:g}", i, _utc(c.start), dur, c.evicted, c.requests])
    result.add_table(
        "Baseline: descheduler cycles (from its log)",
        ["interval (s)", "cycle", "start (UTC)", "duration (ms)", "evicted", "eviction requests"],
        rows,
        "Evictions and requests as the descheduler counts them per cycle (its own log line).",
    )


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _ms_after(base: float | None, t: float | None) -> float | None:
    return None if base is None or t is None else (t - base) * 1000


def _trials_table(result: Result, trials: list[Trial]) -> None:
    rows = []
    for t in trials:
        base = t.timeline.get("label_removed")
        stamps: dict[str, float | None] = {**t.timeline, "evicted": t.info.get("evicted_at")}
        offsets = [_ms_after(base, stamps.get(s)) for s in TRIAL_COLUMNS]
        phase = t.next_cycle - t.revoked_at
        rows.append([f"{t.interval:g}", t.cycle, t.vm, t.node, round(phase, 3), *offsets,
                     t.info.get("kubevirt_start_timestamp"), t.info.get("vmim")])  # fmt: skip
    result.add_table(
        "Baseline trials: trust revoked (ms after label_removed)",
        ["interval (s)", "cycle", "VM", "revoked node", "s to next cycle",
         *[f"{s} (ms)" for s in TRIAL_COLUMNS], "KubeVirt startTimestamp", "VMIM"],
        rows,
        "`s to next cycle`: from the revocation to the start of the next scheduled cycle "
        "(NonSlidingUntil: first cycle at start, then every interval); `evicted`: the "
        "descheduler's log line `Evicting pod` for the VM's launcher pod.",
    )  # fmt: skip


def _request_results(
    result: Result, bed: Any, rec: Recorder, raised: dict[str, float], until: float, runs: list[Run]
) -> list[tuple[Timeline, Json]]:
    changed = _launcher_affinity_changed(bed)
    events = rec.merged()
    out, rows = [], []
    for vm, t in sorted(raised.items()):
        timeline, info = request_outcome(events, RAISE_NS, vm, t, until)
        out.append((timeline, info))
        cycles = sum(1 for r in runs for c in r.log.cycles if t <= c.start <= until)
        moved = "vmim_created" in timeline
        outcome = "migrated" if moved else f"no migration within {info['window_s']:.0f} s"
        rows.append([vm, info["vmi_affinity_copied_ms"], changed.get(vm), cycles, outcome])
    result.add_table(
        "Baseline: request raised (the tenant edits the VM's required affinity)",
        ["VM", "edit -> VMI affinity updated (ms)", "launcher pod affinity changed",
         "descheduler cycles in window", "outcome"],
        rows,
        "KubeVirt copies the VM's new affinity to the VMI (LiveUpdate) and does not migrate; the "
        "running launcher pod keeps the affinity it was created with, which its node still "
        "satisfies, so RemovePodsViolatingNodeAffinity finds nothing to evict.",
    )  # fmt: skip
    return out


def _attach(result: Result, timelines: list[Timeline], start: str, label: str, empty: str) -> None:
    """Baseline samples for the matching figures (spans from the decision stage); a figure
    whose baseline never observed the end stage gets a note instead of a number."""
    for end in ("vmim_created", "migration_started", "vm_running"):
        samples = span_ms(timelines, start, end)
        for fig in result.figures:
            if not figure_matches(fig, start, end):
                continue
            if samples:
                fig.baseline_samples, fig.baseline_label = samples, label
            else:
                fig.note = (fig.note + " " if fig.note else "") + f"Baseline ({label}): {empty}."


def run_in(
    bed: Any, watch: Any, result: Result, quick: bool = False, plan: Plan | None = None
) -> None:
    """Run the baseline scenarios in `bed` (sod-operator stopped, and no verifier managing
    labels: the baseline writes the verifier's labels on its own nodes) in their own namespaces and
    nodes; add their tables, figure baselines and method text to `result`. `watch` (the
    caller's VMIM watch) is not needed: the baseline keeps its own watches, with history."""
    from sod_testbed.binaries import MissingBinaries
    from sod_testbed.descheduler import descheduler_binary

    del watch
    try:
        descheduler_binary()
    except MissingBinaries as err:
        result.not_run["descheduler baseline"] = str(err)
        return
    plan = plan or (Plan.quick() if quick else Plan.full())
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    pool = _pool(plan)
    bed.cluster.create_nodes(pool)
    rec = recorder(bed.cluster.kubeconfig).start()
    raise_vms = [f"raise-{i}" for i in range(plan.raised)]
    runs: list[Run] = []
    raised: dict[str, float] = {}
    try:
        for ns in (REVOKE_NS, RAISE_NS):
            bed.namespace(ns)
        create_vms(bed, RAISE_NS, raise_vms, LOW_PROFILE)
        check_labels_kept(bed, pool)

        def raise_once() -> None:
            if not raised:
                raised.update(_raise(bed, raise_vms))

        for interval, cycles in plan.runs:
            # Fresh VMs per descheduler run, so that no run inherits another's evacuations.
            vms = [f"revoke-{interval:g}s-{i}" for i in range(plan.per_cycle)]
            create_vms(bed, REVOKE_NS, vms, HIGH_PROFILE)
            check_labels_kept(bed, pool)
            runs.append(_run_interval(bed, rec, plan, interval, cycles, vms, raise_once, rng))
            delete_vms(bed, REVOKE_NS, vms)
        until = time.time()
        requests = _request_results(result, bed, rec, raised, until, runs)
    finally:
        rec.stop()
        for ns in (REVOKE_NS, RAISE_NS):
            bed.delete_namespace(ns)
        bed.cluster.delete_nodes([n.name for n in pool])
    _report(result, plan, runs, requests, seed)


def _report(
    result: Result, plan: Plan, runs: list[Run], requests: list[tuple[Timeline, Json]], seed: int
) -> None:
    note = ("Starts at label_removed: the benchmark removes the verifier's label itself (the "
            "verifier's part is the same with or without sod-operator).")  # fmt: skip
    for run in runs:
        tls = [t.timeline for t in run.trials]
        title = f"Baseline: descheduler every {run.interval:g} s, trust revoked"
        result.tables.append(timeline_table(title, tls, STAGES, note))
    _trials_table(result, [t for r in runs for t in r.trials])
    _cycle_table(result, runs)
    shortest = min(runs, key=lambda r: r.interval)
    label = f"descheduler every {shortest.interval:g} s + KubeVirt eviction -> live migration"
    _attach(result, [t.timeline for t in shortest.trials], "label_removed", label, "no sample")
    request_tls = [tl for tl, _ in requests]
    if requests and not any("vmim_created" in tl for tl in request_tls):
        window = min(info["window_s"] for _, info in requests)
        result.not_run["baseline: request raised"] = (
            f"no migration within {window:.0f} s: the tenant's affinity edit reaches the VMI but "
            "not the running launcher pod, so the descheduler never evicts it"
        )
    _attach(result, request_tls, "request_raised", "VM affinity edited + descheduler",
            "no migration within the window")  # fmt: skip
    result.params["baseline"] = {
        "runs": [{"interval_s": i, "cycles": c} for i, c in plan.runs],
        "revoked_per_cycle": plan.per_cycle,
        "raised": plan.raised,
        "seed": seed,
    }
    result.method += method_text(plan)


def method_text(plan: Plan) -> str:
    runs = ", ".join(f"{c} cycle(s) at {i:g} s" for i, c in plan.runs)
    return f"""
**Baseline: the real alternative, same run, same sandbox** (bench/baseline.py). What a platform
team builds today without sod-operator: the verifier's `profile.<arch>=verified` labels; KubeVirt
VirtualMachines whose `spec.template.spec.affinity` requires them (KubeVirt copies it to the VMI
and renders it into the virt-launcher pod) with `evictionStrategy: LiveMigrate`; the Kubernetes
descheduler (sigs.k8s.io/descheduler, the version of tools/versions.env, built from the Go module
proxy) with only `RemovePodsViolatingNodeAffinity`
(`nodeAffinityType: [requiredDuringSchedulingIgnoredDuringExecution]`), the Helm chart's
DefaultEvictor arguments (`PodsWithLocalStorage` protection disabled, so launcher pods with
emptyDirs are evictable; charts/descheduler/values.yaml) and `EvictionsInBackground=true`, the
setting KubeVirt requires for descheduling VMs (kubevirt.io/monitoring/runbooks/
HCOMisconfiguredDescheduler.html); its eviction goes to virt-api's pods/eviction admitter, which
marks the VMI for evacuation, and virt-controller's evacuation controller creates the VMIM.
sod-operator is stopped; the baseline has its own namespaces and kwok nodes (a constant pool
label in the required term keeps its VMs off the other scenarios' nodes).

* **Intervals**: {DEFAULT_INTERVAL:g} s, the shipped interval of the descheduler as a Deployment
  (`--descheduling-interval 5m` in kubernetes/deployment/deployment.yaml, `deschedulingInterval:
  5m` in the Helm chart), and {SHORTEST_INTERVAL:g} s, the shortest its documentation leads to:
  `--descheduling-interval` has no documented lower bound (docs/cli/descheduler.md), the chart's
  default kind is a CronJob (`*/2 * * * *`) and cron cannot run more often than every minute;
  OpenShift Virtualization's page on descheduling VMs sets `deschedulingIntervalSeconds: 60`
  (docs.redhat.com, OpenShift Container Platform 4.21, Virtualization, "Configuring descheduler
  evictions for virtual machines"). The figures' baseline is the {SHORTEST_INTERVAL:g} s run,
  the one least favourable to sod-operator.
* **Trust revoked**: {plan.per_cycle} VMs, one per node, on {2 * plan.per_cycle} verified nodes.
  The descheduler runs its first cycle at start and then every interval from it
  (`wait.NonSlidingUntil`); within each interval the benchmark removes the label of each VM's
  node at its own random moment (one uniform draw in each of {plan.per_cycle} equal slices of
  the interval), so one cycle yields {plan.per_cycle} samples at different phases; the next
  cycle evicts them all (at most 5 parallel migrations, KubeVirt's default, so none queues).
  The labels are restored once every VM moved. Runs: {runs} (cycle starts read from the
  descheduler's own log). After the first cycle of a run, revocations wait until the previous
  cycle's migrations ended, so early phases are slightly under-sampled (which shortens the
  baseline's figures, never lengthens them).
* **Request raised**: {plan.raised} VMs requiring `{LOW_PROFILE}` run on such nodes; right after
  the first cycle of the first run the tenant replaces their required affinity by
  `{HIGH_PROFILE}` (a merge patch of the VM; request_raised = just before it); the same
  descheduler keeps running through every run above. Recorded: when the VMI showed the new
  affinity, whether the running launcher pod's affinity changed, and any VMIM.
* Stages are observed by watches of nodes, pods, VMIs and VMIMs on the benchmark's clock; the
  shortest interval's samples are the baseline of the figures that span from label_removed.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the baseline alone in a fresh sandbox and print the result (a test driver)."""
    import json

    from sod_testbed.handler_player import PlayerConfig
    from sod_testbed.nodes import parse_nodes

    from bench import testbed

    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--interval", type=float, help="one run of one cycle at this interval")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.interval:
        plan = Plan(runs=((args.interval, 1),), per_cycle=plan.per_cycle, raised=plan.raised)
    result = Result(name="baseline", title="Descheduler baseline")
    nodes = parse_nodes("hyperwall=1,tpm-measured-boot=1")
    with testbed.sandbox(
        nodes, PlayerConfig(time_scale=0.02, resync_seconds=5.0), "baseline"
    ) as bed:
        watch = testbed.migration_watch(bed.cluster.kubeconfig).start()
        try:
            run_in(bed, watch, result, args.quick, plan)
        finally:
            watch.stop()
    print(
        json.dumps(
            {"tables": result.tables, "not_run": result.not_run, "params": result.params},
            indent=1,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
