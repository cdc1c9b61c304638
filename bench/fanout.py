"""Incident fan-out (issue 7, item 2): a node holding 50 SecureVMs is revoked. Time until every
SecureVM's relocation is planned, until all 50 migrations are created (never more at once than
KubeVirt's limits allow), and until every VM runs on a compliant node, with the player's
Table V-calibrated migration durations; against the analytic lower bound for those limits and,
in the same run and bed (issue 15, item 2), the real alternative: sod-operator stopped, VMs
whose required node affinity asks for the verifier's label, the Kubernetes descheduler
(RemovePodsViolatingNodeAffinity) every 60 s (the shortest its documentation leads to) and
KubeVirt's eviction -> live migration (`evictionStrategy: LiveMigrate`), on the baseline's own
kwok node pool (bench/baseline.py), revoked at a random phase of the descheduler's cycle.

Pure parts (unit-tested): `migration_rounds`, `baseline_spans`. `incident`, `baseline_incident`
and `run` are the shell.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from bench import baseline, deps, testbed
from bench.reaction import HIGH, REQUIRED
from bench.stats import Figure, Result

Json = dict[str, Any]
Update = tuple[float, tuple[str, str], Json]
"""(seconds observed, (namespace, name) of a VMIM, the VMIM as observed)."""

NAME = "fanout"
TITLE = "Incident fan-out"

BASELINE_NS = "fanout-baseline"
BASELINE_INTERVAL = baseline.SHORTEST_INTERVAL
TIME_SCALE = 0.1
"""Modelled migration durations x0.1 (a 1 GiB guest: ~7.6 s modelled -> ~0.76 s here), so 25
rounds of migrations fit the benchmark's budget; every figure is also given in model time."""


def missing() -> str | None:
    return deps.reason(REQUIRED, testbed=True)


def _planned(bed: Any, namespace: str, names: set[str]) -> bool:
    """Every SecureVM's status records that it is non-compliant (its relocation is planned)."""
    items = bed.api.list(bed.securevm_path(namespace)).get("items", [])
    done = 0
    for obj in items:
        if obj["metadata"]["name"] not in names:
            continue
        status = obj.get("status") or {}
        if status.get("nonCompliantSince") or status.get("relocation"):
            done += 1
    return done == len(names)


def _all_compliant(bed: Any, namespace: str, names: set[str], revoked: str) -> bool:
    running = 0
    for vmi in bed.vmis(namespace):
        st = vmi.get("status") or {}
        if vmi["metadata"]["name"] not in names or st.get("phase") != "Running":
            continue
        mig = st.get("migrationState") or {}
        if (
            st.get("nodeName")
            and st["nodeName"] != revoked
            and not (mig.get("startTimestamp") and not mig.get("endTimestamp"))
        ):
            running += 1
    return running == len(names)


def incident(bed: Any, run: int, count: int, hyperwall: list[str], timeout: float) -> Json:
    """One incident: `count` SecureVMs on hyperwall[0], which is then revoked."""
    from sod_testbed.kubeapi import resource_path

    loaded, others = hyperwall[0], hyperwall[1:]
    for node in others:
        bed.set_verified(node, ["hyperwall"], verified=False)
    bed.set_verified(loaded, ["hyperwall"])
    ns = bed.namespace(f"fanout-{run}")
    names = [f"svm-{i:03d}" for i in range(count)]
    for name in names:
        bed.create_securevm(ns, name, HIGH)
    where = bed.wait_running(ns, names, timeout)
    if set(where.values()) != {loaded}:
        raise RuntimeError(f"VMs not all on {loaded}: {sorted(set(where.values()))}")
    for node in others:
        bed.set_verified(node, ["hyperwall"])
    time.sleep(2.0)  # the operator has seen the targets before the incident
    watch = testbed.migration_watch(bed.cluster.kubeconfig, keep_history=True).start()
    wanted = set(names)
    try:
        t0 = time.perf_counter()
        bed.set_verified(loaded, ["hyperwall"], verified=False)
        t_planned = t_created = t_done = 0.0
        deadline = time.monotonic() + timeout
        while not t_done:
            now = time.perf_counter()
            if not t_planned and _planned(bed, ns, wanted):
                t_planned = now
            with watch.changed:
                mine = [k for k in watch.seen if k[0] == ns]
                if not t_created and len(mine) >= count:
                    t_created = max(watch.seen[k] for k in mine)
            if t_planned and t_created and _all_compliant(bed, ns, wanted, loaded):
                t_done = time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"incident {run} not resolved after {timeout:.0f} s")
            time.sleep(0.05)
        with watch.changed:
            history = list(watch.history)
    finally:
        watch.stop()
    peak, migrations, refill = migration_rounds([u for u in history if u[1][0] == ns])
    bed.api.delete(resource_path("v1", "namespaces", name=ns))
    _wait_gone(bed, ns, timeout)
    return {
        "planned_s": t_planned - t0,
        "created_s": t_created - t0,
        "done_s": t_done - t0,
        "peak_in_flight": peak,
        "migrations": migrations,
        "refill_ms": refill,
    }


def _final(vmim: Json) -> bool:
    return (vmim.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _in_flight(vmim: Json) -> bool:
    """Past virt-controller's queue (a VMIM waits `Pending` while KubeVirt's limits are full)
    and not yet final."""
    return (vmim.get("status") or {}).get("phase") not in (
        None,
        "",
        "Pending",
        "Succeeded",
        "Failed",
    )


def migration_rounds(history: list[Update]) -> tuple[int, int, list[float]]:
    """From one incident's VMIM updates (in time order): the highest number of migrations in
    flight (past Pending, not final) at any moment, how many migrations there were, and each
    round's refill (ms from the latest migration turning final -> the next migration existing)."""
    state: dict[tuple[str, str], bool] = {}
    peak = 0
    created: dict[tuple[str, str], float] = {}
    final_at: dict[tuple[str, str], float] = {}
    for t, key, obj in history:
        state[key] = _in_flight(obj)
        peak = max(peak, sum(state.values()))
        created.setdefault(key, t)
        if _final(obj):
            final_at.setdefault(key, t)
    finals = list(final_at.values())
    refill = []
    for t in sorted(created.values()):
        freed = [f for f in finals if f <= t]
        if freed:
            refill.append((t - max(freed)) * 1000)
    return peak, len(created), refill


def baseline_spans(
    events: list[baseline.Event], namespace: str, vms: list[str], source: str, revoked_at: float
) -> Json:
    """The baseline incident's spans (s after `revoked_at`; None if never observed) from the
    recorder's events (time order): the last VM's migration created, the last VM running off
    `source` with its migration completed; and its migration rounds."""

    def first(kind: str, vm: str, pred: Any) -> float | None:
        return next(
            (t for t, k, o in events
             if k == kind and t >= revoked_at and o["metadata"].get("namespace") == namespace
             and pred(o, vm)),
            None,
        )  # fmt: skip

    created = [first("vmim", vm, lambda o, v: o["spec"].get("vmiName") == v) for vm in vms]
    done = [
        first("vmi", vm, lambda o, v: o["metadata"]["name"] == v and baseline.moved(o, source))
        for vm in vms
    ]
    updates = [
        (t, (o["metadata"].get("namespace", ""), o["metadata"]["name"]), o)
        for t, k, o in events
        if k == "vmim" and t >= revoked_at and o["metadata"].get("namespace") == namespace
    ]
    peak, migrations, refill = migration_rounds(updates)

    def span(ts: list[float | None]) -> float | None:
        return None if not ts or None in ts else max(t for t in ts if t is not None) - revoked_at

    return {
        "created_s": span(created),
        "done_s": span(done),
        "peak_in_flight": peak,
        "migrations": migrations,
        "refill_ms": refill,
    }


def baseline_incident(bed: Any, count: int, nodes: int, rng: random.Random) -> Json:
    """The same incident without sod-operator: `count` VMs requiring the verified label on the
    baseline pool's first node, `nodes` - 1 free verified targets, the descheduler every
    BASELINE_INTERVAL s, the first node's label removed at a random phase of its cycle."""
    loaded = baseline.pool_node("fanout-baseline-0", baseline.HIGH_PROFILE)
    targets = [
        baseline.pool_node(f"fanout-baseline-{i}", baseline.HIGH_PROFILE, verified=False)
        for i in range(1, nodes)
    ]
    vms = [f"vm-{i:03d}" for i in range(count)]
    bed.cluster.create_nodes([loaded, *targets])
    rec = baseline.recorder(bed.cluster.kubeconfig).start()
    try:
        bed.namespace(BASELINE_NS)
        baseline.create_vms(bed, BASELINE_NS, vms, baseline.HIGH_PROFILE)
        where = bed.wait_running(BASELINE_NS, vms, 60)
        if set(where.values()) != {loaded.name}:
            raise RuntimeError(
                f"baseline VMs not all on {loaded.name}: {sorted(set(where.values()))}"
            )
        for node in targets:
            bed.set_verified(node.name, [baseline.HIGH_PROFILE])
        baseline.check_labels_kept(bed, [loaded])
        name = f"descheduler-fanout-{BASELINE_INTERVAL:g}s"
        with baseline.running_descheduler(bed, name, [BASELINE_NS], BASELINE_INTERVAL) as (_, t0):
            phase = rng.uniform(0.0, BASELINE_INTERVAL)
            while time.time() < t0 + phase:
                time.sleep(0.2)
            revoked_at = time.time()
            bed.set_verified(loaded.name, [baseline.HIGH_PROFILE], verified=False)
            # A revocation the next cycle misses (its informer not yet updated) waits one more.
            deadline = revoked_at + 2 * BASELINE_INTERVAL + 300
            baseline.wait_moved(bed, BASELINE_NS, dict.fromkeys(vms, loaded.name), deadline)
        events = rec.merged()
    finally:
        rec.stop()
        bed.delete_namespace(BASELINE_NS)
        bed.cluster.delete_nodes([loaded.name, *[n.name for n in targets]])
    out = baseline_spans(events, BASELINE_NS, vms, loaded.name, revoked_at)
    out["to_next_cycle_s"] = BASELINE_INTERVAL - phase
    return out


def _wait_gone(bed: Any, namespace: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while bed.vmis(namespace):
        if time.monotonic() > deadline:
            raise TimeoutError(f"VMIs of {namespace} not deleted after {timeout:.0f} s")
        time.sleep(0.2)


def run(quick: bool = False) -> Result:
    from sod_testbed.binaries import MissingBinaries
    from sod_testbed.descheduler import descheduler_binary
    from sod_testbed.handler_player import PlayerConfig
    from sod_testbed.migration_model import GIB, MigrationModel, plan_precopy
    from sod_testbed.nodes import parse_nodes

    count = 20 if quick else 50
    runs = 1 if quick else 2
    nodes = parse_nodes("hyperwall=6")
    hyperwall = [n.name for n in nodes]
    sim = PlayerConfig(time_scale=TIME_SCALE, resync_seconds=5.0)
    # KubeVirt's defaults (parallelMigrationsPerCluster, parallelOutboundMigrationsPerNode).
    cluster_limit, node_limit = 5, 2
    one = plan_precopy(MigrationModel(), GIB).total_seconds
    parallel = min(cluster_limit, node_limit)  # all leave one node: the per-node limit binds
    bound_model = math.ceil(count / parallel) * one
    bound = bound_model * TIME_SCALE
    seed = random.SystemRandom().randrange(2**32)
    ours: list[Json] = []
    base: list[Json] = []
    result = Result(name=NAME, title=TITLE)
    try:
        descheduler_binary()
    except MissingBinaries as err:
        result.not_run["descheduler baseline"] = str(err)
    with testbed.sandbox(nodes, sim, NAME) as bed:
        bed.start_operator()
        for i in range(runs):
            ours.append(incident(bed, i, count, hyperwall, 300))
        bed.stop_operator()
        if not result.not_run:
            base.append(baseline_incident(bed, count, len(nodes), random.Random(seed)))
    _figures(result, ours, base, count, parallel, one, bound)
    _incident_table(result, ours, base, count, (cluster_limit, node_limit), bound, bound_model)
    result.params = {
        "securevms": count,
        "runs": runs,
        "baseline_runs": len(base),
        "baseline_interval_s": BASELINE_INTERVAL,
        "baseline_seed": seed,
        "nodes": "hyperwall=6",
        "sim_time_scale": TIME_SCALE,
        "one_migration_model_s": round(one, 2),
    }
    result.method = _method(count, runs, one, (cluster_limit, node_limit))
    return result


BASELINE_LABEL = f"descheduler every {BASELINE_INTERVAL:g} s + KubeVirt eviction -> live migration"


def _figures(
    result: Result, ours: list[Json], base: list[Json], count: int, parallel: int, one: float,
    bound: float,
) -> None:  # fmt: skip
    def fig(key: str, fid: str, label: str, like_for_like: bool = True, **kw: Any) -> Figure:
        samples = [r[key] for r in base if r.get(key) is not None] if like_for_like else []
        return Figure(
            id=fid,
            label=label,
            unit="s",
            better="lower",
            samples=[r[key] for r in ours],
            baseline_label=BASELINE_LABEL if samples else None,
            baseline_samples=samples or None,
            **kw,
        )

    rounds = math.ceil(count / parallel)
    result.figures = [
        fig(
            "planned_s",
            "all_planned",
            f"node revoked -> all {count} relocations planned",
            note="No baseline equivalent: without sod-operator nothing plans relocations; the "
            "descheduler's cycle evicts and KubeVirt's evacuation creates the migrations.",
        ),
        fig(
            "created_s",
            "all_created",
            f"node revoked -> all {count} migrations created",
            like_for_like=False,
            reference_label=f"analytic lower bound: start of the last round, "
            f"({rounds} - 1) x {one * TIME_SCALE:.2f} s",
            reference_value=(rounds - 1) * one * TIME_SCALE,
            note="No baseline ratio: not like for like. The operator creates each migration "
            "when a slot frees; the baseline's evacuation controller creates most of them at "
            "once and virt-controller holds them Pending (its times are in the per-incident "
            "table).",
        ),
        fig(
            "done_s",
            "all_compliant",
            f"node revoked -> all {count} VMs running on a compliant node",
            reference_label=f"analytic lower bound: {rounds} rounds of "
            f"{parallel} x {one * TIME_SCALE:.2f} s",
            reference_value=bound,
        ),
    ]
    refill = [x for r in ours for x in r["refill_ms"]]
    if refill:
        result.figures.append(
            Figure(
                id="slot_refill",
                label="a migration finishes -> the operator's next migration exists",
                unit="ms",
                better="lower",
                samples=refill,
                note="The operator's share of each round; the rest of a round is KubeVirt's "
                "(real virt-controller and kube-scheduler for the target pod, the player's "
                "modelled pre-copy). No baseline: KubeVirt's evacuation controller creates "
                "most migrations at once, ahead of free slots, and virt-controller holds them "
                "Pending.",
            )
        )


def _incident_table(
    result: Result, ours: list[Json], base: list[Json], count: int, limits: tuple[int, int],
    bound: float, bound_model: float,
) -> None:  # fmt: skip
    peak = max(r["peak_in_flight"] for r in ours + base)
    result.add_table(
        "Per incident",
        ["run", "mode", "planned s", "created s", "all compliant s", "in model time s",
         "s to next descheduler cycle", "peak migrations in flight (past Pending)",
         "migrations"],
        [
            [i + 1, mode, r.get("planned_s"), r["created_s"], r["done_s"],
             None if r["done_s"] is None else r["done_s"] / TIME_SCALE,
             r.get("to_next_cycle_s"), r["peak_in_flight"], r["migrations"]]
            for mode, rs in (("watch (ours)", ours), (BASELINE_LABEL, base))
            for i, r in enumerate(rs)
        ],
        note=f"Peak in flight never exceeded {peak} (limits: {limits[0]} per cluster, "
        f"{limits[1]} outbound per node; all {count} VMs leave one node, so at most "
        f"{min(limits)} can run at once). Analytic lower bound for all VMs compliant: "
        f"{bound:.1f} s here, {bound_model:.0f} s in model time. The baseline has no "
        "planned stage (empty).",
    )  # fmt: skip


def _method(count: int, runs: int, one: float, limits: tuple[int, int]) -> str:
    parallel = min(limits)
    return f"""\
Sandbox as for reaction latency, with 6 hyperwall nodes. {count} SecureVMs asking for Basic +
HypervisorProtection are started while only `hyperwall-1` is verified, so all of them run
there; the other five are then verified and, after 2 s, `hyperwall-1`'s verdict is revoked
({runs} incident(s), each a fresh namespace of {count} SecureVMs; one incident = one sample).
**Planned**: every SecureVM's status records the relocation (`nonCompliantSince` or
`relocation` set), polled every 50 ms. **Created**: the last of the {count} migrations appears
on a VMIM watch. **All compliant**: every VMI runs on another node with no migration in
progress. The virt-handler player models each 1 GiB guest's pre-copy migration with its Table V
calibration ({one:.2f} s modelled, x{TIME_SCALE} here = {one * TIME_SCALE:.2f} s); real
virt-controller enforces KubeVirt's limits ({limits[0]} per cluster, {limits[1]} outbound per
node) for ours and the baseline alike, so the analytic lower bound is ceil({count}/{parallel})
= {math.ceil(count / parallel)} rounds of one migration time. Reference ratios below 1 are the
fraction of that ideal achieved.

**Baseline: the real alternative, same run, same sandbox** (bench/baseline.py's parts; one
incident = one sample, n=1). sod-operator is stopped. {count} KubeVirt VirtualMachines whose
`spec.template.spec.affinity` requires the verifier's label `profile.<arch>=verified` for
hyperwall (and the baseline's pool label) with `evictionStrategy: LiveMigrate` are started on
the baseline's own kwok pool of 6 nodes while only its first node is verified; the other five
are then verified. The Kubernetes descheduler (the version of tools/versions.env, built from
the Go module proxy) runs with only `RemovePodsViolatingNodeAffinity`
(`requiredDuringSchedulingIgnoredDuringExecution`) every {BASELINE_INTERVAL:g} s, the shortest
interval its documentation leads to (see the reaction benchmark's method); the first node's
label is removed at a uniformly random phase of its cycle (the table gives the time to the next
cycle). The descheduler's eviction goes to virt-api's pods/eviction admitter, which marks each
VMI for evacuation; virt-controller's evacuation controller creates the migrations within the
limits above. **Created**: the last VM's first VMIM after the revocation; **all compliant**:
the last VM observed Running on its migration's target with the migration completed (watches
of VMIs and VMIMs on the benchmark's clock). Planned has no baseline equivalent: nothing plans
relocations without sod-operator. Slot refill has no baseline: the evacuation controller
creates most migrations at once and virt-controller holds them `Pending` until a slot frees.
"""
