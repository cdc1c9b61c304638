"""Reaction as a timeline (issue 15, item 1): per trigger (trust revoked; request raised), when
each stage of a relocation is observed -- label removed / request raised, VMIM created, target
pod scheduled, migration started (KubeVirt's startTimestamp), VM running on a compliant node --
with p50/p99 per stage span and cumulatively (bench.timeline). The paper's 2.33 s is compared
only with the span it corresponds to: decision -> migration started.

After the operator's trials, the Kubernetes descheduler baseline (bench.baseline, when present)
runs in the same bed with sod-operator stopped and adds its own figures and tables.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import deps, testbed
from bench.stats import Figure, Result, Target, summarize
from bench.timeline import (
    PAPER_END,
    PAPER_SECONDS,
    REQUEST_STAGES,
    REVOCATION_STAGES,
    Timeline,
    decision_stage,
    span_ms,
    timeline_table,
)

NAME = "reaction"
TITLE = "Reaction timeline"

REQUIRED = (
    "sod_operator.handlers",
    "sod_operator.main",
    "sod_operator.kube",
    "sod_testbed.cluster",
    "sod_testbed.handler_player",
)
LOW = {"options": ["Basic"]}
HIGH = {"options": ["Basic", "HypervisorProtection"]}
NODES = "hyperwall=4,tpm-measured-boot=3"
"""The reaction bed's kwok nodes (also bench.ab_operator's)."""
TARGETS = [Target("median", "<=", 50.0), Target("p99", "<=", 250.0)]
LABEL_STAGES = REVOCATION_STAGES[REVOCATION_STAGES.index("label_removed") :]
"""The revocation trials here start at the label's removal (see the method)."""
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
CREATED_BY_LABEL = "kubevirt.io/created-by"

Event = tuple[float, tuple[str, str], dict[str, Any]]
"""(epoch seconds the bench observed it, (namespace, name), object)."""


def missing() -> str | None:
    return deps.reason(REQUIRED, testbed=True)


# ---- pure: a trial's timeline from the watches' events ------------------------------------------


def _first(events: Sequence[Event], since: float, match: Any) -> Event | None:
    return next((e for e in events if e[0] >= since and match(e[1], e[2])), None)


def _migration(vmi: dict[str, Any]) -> dict[str, Any]:
    return dict((vmi.get("status") or {}).get("migrationState") or {})


def parse_stamp(text: str | None) -> float | None:
    """A Kubernetes timestamp (RFC 3339, second resolution) as epoch seconds."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def trial_timeline(
    events: dict[str, list[Event]],
    t0: float,
    namespace: str,
    vmi: str,
    node: str | None = None,
    label: str | None = None,
    profile: str | None = None,
) -> tuple[Timeline, float | None]:
    """The stages observed since `t0` for the migration of `vmi` (the first VMIM for it created
    after `t0`), and KubeVirt's own startTimestamp of that migration (epoch s) if seen.
    `events` per kind ("natt", "node", "vmim", "pod", "vmi") in observation order; the
    verdict (NodeAttestation of `node` rejecting `profile`) is looked for only with `profile`."""
    tl: Timeline = {}
    if node is not None and profile is not None:
        rejected = _first(
            events["natt"], t0, lambda k, o: k[1] == node and _verdict(o, profile) == "Rejected"
        )
        if rejected:
            tl["verdict_written"] = rejected[0]
    if node is not None and label is not None:
        gone = _first(events["node"], t0, lambda k, o: k[1] == node and label not in _labels(o))
        if gone:
            tl["label_removed"] = gone[0]
    vmim = _first(
        events["vmim"], t0, lambda k, o: k[0] == namespace and o["spec"].get("vmiName") == vmi
    )
    if vmim is None:
        return tl, None
    tl["vmim_created"] = vmim[0]
    uid = vmim[2]["metadata"].get("uid")
    pod = _first(events["pod"], t0, lambda k, o: _is_target_pod(k, o, namespace, uid))
    if pod:
        tl["target_scheduled"] = pod[0]
    mine = [e for e in events["vmi"] if e[1] == (namespace, vmi)]
    started = _first(
        mine, t0, lambda k, o: _migration(o).get("migrationUid") == uid and _started(o)
    )
    stamp = None
    if started:
        tl["migration_started"] = started[0]
        stamp = parse_stamp(_migration(started[2]).get("startTimestamp"))
    running = _first(mine, t0, lambda k, o: _migration(o).get("migrationUid") == uid and _done(o))
    if running:
        tl["vm_running"] = running[0]
    return tl, stamp


def _verdict(natt: dict[str, Any], profile: str) -> str | None:
    for v in (natt.get("status") or {}).get("verdicts") or []:
        if v.get("profile") == profile:
            return str(v.get("result"))
    return None


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def _is_target_pod(key: tuple[str, str], pod: dict[str, Any], ns: str, uid: str | None) -> bool:
    if key[0] != ns or not (pod.get("spec") or {}).get("nodeName"):
        return False
    return uid is not None and _labels(pod).get(MIGRATION_JOB_LABEL) == uid


def _started(vmi: dict[str, Any]) -> bool:
    return bool(_migration(vmi).get("startTimestamp"))


def _done(vmi: dict[str, Any]) -> bool:
    st = vmi.get("status") or {}
    mig = _migration(vmi)
    return (
        bool(mig.get("completed"))
        and not mig.get("failed")
        and st.get("phase") == "Running"
        and st.get("nodeName") == mig.get("targetNode")
    )


# ---- the shell: watches and trials --------------------------------------------------------------


def reaction_watches(kubeconfig: Path) -> testbed.Recorder:
    """Watches on NodeAttestations, nodes, VMIMs, launcher pods and VMIs."""
    from sod_operator.api.constants import API_VERSION
    from sod_testbed.kubeapi import resource_path

    def brief(obj: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"labels": obj["metadata"].get("labels") or {}}}

    def watch(api_version: str, plural: str, **kw: Any) -> testbed.ObjectWatch:
        return testbed.ObjectWatch(kubeconfig, resource_path(api_version, plural), True, **kw)

    return testbed.Recorder(
        {
            "natt": watch(API_VERSION, "nodeattestations"),
            "node": watch("v1", "nodes", reduce=brief),
            "vmim": testbed.migration_watch(kubeconfig, keep_history=True),
            "pod": watch("v1", "pods"),
            "vmi": watch(testbed.KUBEVIRT, "virtualmachineinstances"),
        }
    )


def observe(
    watches: testbed.Recorder, t0: float, timeout: float, **where: Any
) -> tuple[Timeline, Any]:
    """Wait until the trial's VM runs on its migration's target; return its timeline."""
    deadline = time.monotonic() + timeout
    while True:
        tl, stamp = trial_timeline(watches.by_kind(), t0, **where)
        if "vm_running" in tl:
            return tl, stamp
        if time.monotonic() > deadline:
            raise TimeoutError(f"trial of {where} reached only {sorted(tl)} in {timeout:.0f} s")
        time.sleep(0.1)


def revocation_trials(
    bed: Any, watches: testbed.Recorder, namespace: str, trials: int, timeout: float
) -> list[tuple[Timeline, float | None]]:
    """Remove the verdict label of the node the VM runs on; follow the VM to its new node.
    Each trial revokes the VM's current node and restores the label once the VM has moved."""
    from sod_operator.api.constants import profile_label

    vm = "revoke-me"
    bed.create_securevm(namespace, vm, HIGH)
    out = []
    for _ in range(trials):
        node = bed.wait_running(namespace, [vm], timeout)[vm]
        watches.forget()
        time.sleep(random.uniform(0.05, 0.25))  # not in lock-step with any periodic work
        t0 = time.time()
        bed.set_verified(node, ["hyperwall"], verified=False)
        where = {"namespace": namespace, "vmi": vm, "node": node}
        out.append(observe(watches, t0, timeout, label=profile_label("hyperwall"), **where))
        bed.wait_running(namespace, [vm], timeout)
        bed.set_verified(node, ["hyperwall"])
    return out


def start_trust(bed: Any, nodes: Sequence[Any], timeout: float) -> Any:
    """The trust monitor on `nodes` (a swtpm and a node-agent each, one verifier), as
    `sodctl sandbox up` runs it; returns the TrustBed once every node is verified by it."""
    from sod_operator.api.constants import VERIFIED, profile_label
    from sod_testbed.trust import TrustBed, TrustConfig

    trust = TrustBed(bed.cluster, TrustConfig(agent_interval=1.0, verifier_resync=10.0))
    trust.install()
    for node in nodes:
        trust.start_node(node)
    trust.start_verifier()
    for node in nodes:
        label = profile_label(node.architecture)
        _wait(lambda n=node.name, lb=label: bed.node_labels(n).get(lb) == VERIFIED, timeout,
              f"the verifier verifying {node.name}")  # fmt: skip
    return trust


def evidence_phase(
    bed: Any, watches: testbed.Recorder, nodes: Sequence[Any], trials: int, result: Result
) -> list[tuple[Timeline, float | None]]:
    """The real-evidence trials, last in the bed; a failure of the trust monitor is reported
    (not_run, with the reason and where the logs are) and keeps the other trials' figures."""
    from sod_testbed.cluster import SandboxError

    try:
        trust = start_trust(bed, nodes, 120)
        bed.start_operator()
        ns = bed.namespace("revoke-evidence")
        return evidence_trials(bed, trust, watches, ns, trials, 120)
    except (TimeoutError, SandboxError, OSError) as err:
        result.not_run["trust revoked by broken evidence"] = (
            f"{type(err).__name__}: {err} (logs: {bed.cluster.log_dir})"
        )
        return []
    finally:
        bed.stop_operator()


def _wait(ok: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def evidence_trials(
    bed: Any, trust: Any, watches: testbed.Recorder, namespace: str, trials: int, timeout: float
) -> list[tuple[Timeline, float | None]]:
    """Break the evidence of the node the VM runs on (an unexpected measurement extended into
    its swtpm's PCR 4, `sodctl sandbox break --how pcr`); follow the node-agent's next quote,
    the verifier's verdict and label removal, and the VM to its new node; then reboot the node
    (`sandbox heal`) and wait until the verifier labels it again."""
    from sod_operator.api.constants import VERIFIED, profile_label

    vm, label = "revoke-me", profile_label("hyperwall")
    bed.create_securevm(namespace, vm, HIGH)
    out = []
    for _ in range(trials):
        node = bed.wait_running(namespace, [vm], timeout)[vm]
        watches.forget()
        time.sleep(random.uniform(0.05, 0.25))
        t0 = time.time()
        trust.break_node(node, "pcr")
        where = {"namespace": namespace, "vmi": vm, "node": node, "label": label}
        tl, stamp = observe(watches, t0, timeout, profile="hyperwall", **where)
        out.append(({"evidence_changed": t0, **tl}, stamp))
        bed.wait_running(namespace, [vm], timeout)
        trust.heal_node(node)
        _wait(lambda n=node: bed.node_labels(n).get(label) == VERIFIED, timeout,
              f"{node} verified again")  # fmt: skip
    return out


def raise_trials(
    bed: Any,
    watches: testbed.Recorder,
    namespace: str,
    trials: int,
    timeout: float,
    hyperwall: list[str],
) -> list[tuple[Timeline, float | None]]:
    """Raise each VM's request from Basic to Basic+HypervisorProtection; follow it to a
    hyperwall node."""
    names = [f"raise-{i:03d}" for i in range(trials)]
    # Place the VMs while no node is verified for hyperwall: they all start on a node that
    # satisfies the low request only.
    for node in hyperwall:
        bed.set_verified(node, ["hyperwall"], verified=False)
    for name in names:
        bed.create_securevm(namespace, name, LOW)
    bed.wait_running(namespace, names, timeout * 4)
    for node in hyperwall:
        bed.set_verified(node, ["hyperwall"])
    time.sleep(1.0)  # let the operator see the nodes before the first trial
    out = []
    patch = {"spec": {"security": {"options": HIGH["options"]}}}
    for name in names:
        watches.forget()
        time.sleep(random.uniform(0.05, 0.25))
        t0 = time.time()
        bed.api.merge_patch(bed.securevm_path(namespace, name), patch)
        tl, stamp = observe(watches, t0, timeout, namespace=namespace, vmi=name)
        out.append(({"request_raised": t0, **tl}, stamp))
    return out


def run_baseline(bed: Any, watch: Any, result: Result, quick: bool) -> None:
    """The descheduler baseline in this bed (sod-operator stopped), when bench.baseline exists."""
    try:
        from bench import baseline  # type: ignore[attr-defined,unused-ignore]
    except ImportError as err:
        result.not_run["Kubernetes descheduler baseline"] = f"bench.baseline not importable: {err}"
        return
    baseline.run_in(bed, watch, result, quick)


def player_config(model: Any) -> Any:
    """The reaction bed's virt-handler player: unscaled `model` durations, 5 s resync."""
    from sod_testbed.handler_player import PlayerConfig

    return PlayerConfig(time_scale=1.0, resync_seconds=5.0, model=model)


def run(quick: bool = False) -> Result:
    from sod_testbed.nodes import parse_nodes

    trials = 3 if quick else 20
    evidence = 2 if quick else 10
    nodes = parse_nodes(NODES)
    hyperwall = [n.name for n in nodes if n.architecture == "hyperwall"]
    model, model_source = migration_model()
    player = player_config(model)
    result = Result(name=NAME, title=TITLE)
    result.params = {
        "trials_per_trigger": trials,
        "evidence_trials": evidence,
        "nodes": NODES,
        "migration_model": model_source,
        "player_time_scale": player.time_scale,
    }
    with testbed.sandbox(nodes, player, NAME) as bed:
        for n in nodes:
            bed.set_verified(n.name, [n.architecture])
        watches = reaction_watches(bed.cluster.kubeconfig).start()
        try:
            bed.start_operator()
            # Each trigger in its own namespace, deleted after it, so no VM of one is moved
            # by the other's revocations.
            ns = bed.namespace("revoke")
            revoked = revocation_trials(bed, watches, ns, trials, 120)
            bed.delete_namespace(ns)
            ns = bed.namespace("raise")
            raised = raise_trials(bed, watches, ns, trials, 120, hyperwall)
            bed.delete_namespace(ns)
            bed.stop_operator()
            write_path = server_side_costs(bed.api)
            watches.forget()
            decision_figures(result, revoked, raised)
            run_baseline(bed, watches.watches["vmim"], result, quick)
            # Last: from here on the verifier owns the hyperwall labels (and its admission
            # policies keep everyone else from writing them).
            broken = evidence_phase(bed, watches, [n for n in nodes if n.name in hyperwall],
                                    evidence, result)  # fmt: skip
        finally:
            watches.stop()
    report(result, revoked, raised, broken)
    result.add_table(*write_path)
    result.method = method(trials, evidence, len(nodes), model_source)
    return result


def migration_model() -> tuple[Any, str]:
    """The player's migration model: fitted to this machine's real QEMU migrations when
    bench/results/migration.json holds a fit (bench/migration_fit.py), else the defaults
    calibrated against the paper's Table V. Returns (model, which one)."""
    from sod_testbed.migration_model import MigrationModel, calibrated_model

    try:
        return calibrated_model(), "fitted to real QEMU migrations (bench/results/migration.json)"
    except (FileNotFoundError, KeyError):
        return MigrationModel(), "defaults calibrated on the paper's Table V (no QEMU fit found)"


PAPER_LABEL = "paper: OpenStack's added delay to trigger a migration (Section VI)"
PAPER_NOTE = (
    "the span the paper's 2.33 s corresponds to (its migrate decision -> migration under way; "
    "the paper's figure is an average, ours a median). What differs: the nodes are kwok, so "
    "the target virt-launcher pod starts at once (no image pull, no kubelet, no QEMU start) and "
    "the node side of KubeVirt is the test bed's virt-handler player, whose modelled migration "
    "set-up time lies between the target pod and startTimestamp; the paper's figure is from a "
    "real OpenStack deployment on real hosts"
)


def _figure(
    fid: str, label: str, samples: list[float], paper: bool, targets: list[Target] | None = None
) -> Figure:
    return Figure(
        id=fid,
        label=label,
        unit="ms",
        better="lower",
        samples=samples,
        targets=[] if paper else (TARGETS if targets is None else targets),
        reference_label=PAPER_LABEL if paper else None,
        reference_value=PAPER_SECONDS * 1000 if paper else None,
        note=PAPER_NOTE if paper else "",
    )


def decision_figures(result: Result, revoked: list[Any], raised: list[Any]) -> None:
    """Figures for the spans from the decision with a target or the paper's reference. Made
    before the baseline runs: it adds its samples to the figures of the same span (their ids
    are `<start>_to_<end>`, bench.baseline.figure_matches)."""
    spans = (
        ("node's verdict label removed", [tl for tl, _ in revoked], LABEL_STAGES),
        ("SecureVM request raised", [tl for tl, _ in raised], REQUEST_STAGES),
    )
    for what, tls, stages in spans:
        start = decision_stage(stages)
        result.figures += [
            _figure(f"{start}_to_vmim_created", f"{what} -> VMIM created",
                    span_ms(tls, start, "vmim_created"), paper=False),
            _figure(f"{start}_to_{PAPER_END}", f"{what} -> migration started",
                    span_ms(tls, start, PAPER_END), paper=True),
        ]  # fmt: skip


WRITE_PATH_METRICS = {
    "apiserver_request_duration_seconds": ("POST", "virtualmachineinstancemigrations"),
    "apiserver_admission_webhook_admission_duration_seconds": None,
}


def histogram_means(metrics: str, name: str) -> dict[tuple[str, ...], tuple[int, float]]:
    """Calls and mean ms of one Prometheus histogram of a text exposition, by its labels
    (`le` aside; a `rejected` label is summed over)."""
    sums: dict[tuple[str, ...], float] = {}
    counts: dict[tuple[str, ...], float] = {}
    for line in metrics.splitlines():
        for suffix, into in (("_sum{", sums), ("_count{", counts)):
            if not line.startswith(name + suffix):
                continue
            labels_text, _, value = line.rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            labels.pop("rejected", None)
            key = tuple(f"{k}={v}" for k, v in sorted(labels.items()))
            into[key] = into.get(key, 0.0) + float(value)
    return {k: (int(n), sums.get(k, 0.0) * 1000 / n) for k, n in counts.items() if n}


def write_path_table(metrics: str) -> tuple[str, list[str], list[list[Any]], str]:
    """What creating a VMIM costs on the server side: the apiserver's own histograms of its
    POST of VirtualMachineInstanceMigrations and of the admission webhooks it called."""
    rows: list[list[Any]] = []
    for name, only in WRITE_PATH_METRICS.items():
        for labels, (calls, mean) in sorted(histogram_means(metrics, name).items()):
            if only and not {f"verb={only[0]}", f"resource={only[1]}"} <= set(labels):
                continue
            if not only and "migration" not in dict(x.split("=", 1) for x in labels).get(
                "name", ""
            ):
                continue  # the webhooks of other kinds are not on this path
            shown = ", ".join(x for x in labels if x.split("=")[0] in ("name", "type",
                              "operation", "resource", "verb"))  # fmt: skip
            rows.append([name.removeprefix("apiserver_"), shown, calls, mean])
    note = (
        "Read from kube-apiserver's /metrics when the operator's trials ended (its "
        "histograms since the sandbox started: the trials' VMIMs and the bed's set-up). The "
        "span label_removed -> vmim_created contains one such POST, with virt-api's admission "
        "webhooks inside it; the rest is the watch delivering the label change and the "
        "operator's own work."
    )
    return ("Server side of a VMIM create", ["histogram", "labels", "calls", "mean (ms)"],
            rows, note)  # fmt: skip


def server_side_costs(api: Any) -> tuple[str, list[str], list[list[Any]], str]:
    return write_path_table(api.get_text("/metrics"))


def report(result: Result, revoked: list[Any], raised: list[Any], broken: list[Any]) -> None:
    """The evidence trials' figure; the full timelines as tables; KubeVirt's own
    startTimestamp against the bench's observation of it."""
    rev = [tl for tl, _ in revoked]
    req = [tl for tl, _ in raised]
    real = [tl for tl, _ in broken]
    if real:
        what = "node's evidence broken (swtpm PCR 4 extended) -> VMIM created"
        samples = span_ms(real, "evidence_changed", "vmim_created")
        fid = "evidence_changed_to_vmim_created"
        result.figures.append(_figure(fid, what, samples, False, targets=[]))
    note_rev = (
        "Trials start at label_removed: the bench removes the verifier's label itself, so "
        "evidence_changed and verdict_written are not part of these trials (see the next table)."
    )
    note_real = (
        "Real evidence: a node-agent per hyperwall node quoting its swtpm every second, the "
        "verifier judging the quotes; the trial extends an unexpected measurement into PCR 4."
    )
    for title, tls, stages, note in (
        ("Trust revoked (label removed by the bench): timeline per stage", rev, LABEL_STAGES,
         note_rev),
        ("Trust revoked (node's evidence broken): timeline per stage", real, REVOCATION_STAGES,
         note_real),
        ("Request raised: timeline per stage", req, REQUEST_STAGES, ""),
    ):  # fmt: skip
        table = timeline_table(title, tls, stages, note)
        result.add_table(table["title"], table["columns"], table["rows"], table["note"])
    rows = []
    for trigger, trials in (
        ("trust revoked (label)", revoked),
        ("trust revoked (evidence)", broken),
        ("request raised", raised),
    ):
        lags = [(tl[PAPER_END] - s) * 1000 for tl, s in trials if s and PAPER_END in tl]
        if lags:
            s = summarize(lags)
            rows.append([trigger, s["n"], s["median"], s["p99"], s["min"], s["max"]])
    result.add_table(
        "migration_started: the bench's observation minus KubeVirt's startTimestamp",
        ["trigger", "n", "p50 (ms)", "p99 (ms)", "min (ms)", "max (ms)"],
        rows,
        "KubeVirt writes startTimestamp with one-second resolution (truncated), so this "
        "difference lies between the watch delay and that plus one second; the timelines use "
        "the bench's observation.",
    )


def method(trials: int, evidence: int, nodes: int, model_source: str) -> str:
    return f"""\
Sandbox: real control plane, {nodes} kwok nodes (4 `hyperwall`, 3 `tpm-measured-boot`, verdict
labels written as the verifier writes them), KubeVirt's own virt-api and virt-controller
(v1.9.0) with the test bed's virt-handler player on the node side, the example catalog, and
`sod-operator` as its own process. The player's migration durations come from its model,
{model_source}, unscaled. Watches on Nodes, VirtualMachineInstanceMigrations, pods and
VirtualMachineInstances stamp every event on the bench's clock; a trial's timeline is the first
observation of each stage after the bench's write:
`vmim_created` (a VMIM for the VM), `target_scheduled` (the launcher pod labelled with that
VMIM's UID has `spec.nodeName`), `migration_started` (the VMI's
`status.migrationState.startTimestamp` set for that VMIM; KubeVirt's own stamp, second
resolution, is compared in the last table), `vm_running` (the VMI Running on the migration's
target node with `migrationState.completed`). Each trial waits until its VM runs on the
target, so no trial waits for a migration slot. Between `target_scheduled` and
`migration_started` lies the player's modelled migration set-up time (the model's
`setup_seconds`), as a real virt-handler's target preparation would. {trials} trials per trigger.

* **Trust revoked**: one SecureVM asking for Basic + HypervisorProtection runs on a hyperwall
  node; the trial removes that node's `profile.hyperwall=verified` label, as the verifier does
  when the node's evidence fails, and restores it once the VM has moved; the next trial revokes
  the VM's new node. These timelines start at `label_removed` (the bench's watch seeing the
  label gone), so many trials fit.
* **Trust revoked by broken evidence** ({evidence} trials, fewer: each needs a reboot of the
  node's TPM): last in the same bed, after the baseline, the trust monitor runs on the 4
  hyperwall nodes as `sodctl sandbox up` runs it (a swtpm and a `sod-node-agent` per node
  answering the verifier's nonce every second, one `sod-verifier`; from here on only the
  verifier writes the hyperwall labels). A trial extends an unexpected measurement into
  PCR 4 of the VM's node's swtpm (`sodctl sandbox break --how pcr`; `evidence_changed` is the
  moment before), then follows `verdict_written` (that node's NodeAttestation observed
  rejecting `hyperwall`) and the label's removal by the verifier through the same stages;
  then the node is rebooted (swtpm restarted, boot log measured again, `sandbox heal`) and
  the next trial waits until the verifier labels it again.
* **Request raised**: {trials} SecureVMs asking for Basic start on tpm-measured-boot nodes;
  each trial raises one to Basic + HypervisorProtection (a merge patch of
  `spec.security.options`); `request_raised` is the moment just before the patch.
* **The paper**: its prototype's OpenStack added 2.33 s on average to trigger a migration
  (Section VI); it is compared only with decision -> `migration_started` (decision =
  `label_removed` / `request_raised`), the one span that corresponds; see that figure's note for
  what differs. The spans after `migration_started` are the player's modelled migration.
"""
