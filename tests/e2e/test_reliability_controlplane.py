"""Control-plane faults during a relocation (issue 8, item 2): kube-apiserver, etcd,
virt-controller and virt-api, each stopped and started again while SecureVMs are being moved
off a node that lost trust.

A private bed (`tests.reliability.bed`) runs the whole product for real: three HyperWall nodes,
each with a swtpm and a `sod-node-agent`; the `sod-verifier`; `sod-operator` (chart-default
Lease timings: 15 s lease, 10 s renew deadline, 2 s retry) watching 10 SecureVMs; real
virt-api and virt-controller, with the virt-handler player playing the nodes' side. A trial:
break the node holding the most VMs through attestation (its agent's simulated source reports
memory violations: the verifier revokes its label), wait until a migration is under way, stop
the component for `DOWN` seconds, start it with the same command line (same port, same etcd
data), then measure, from the moment it is healthy again (what its readiness probe would ask;
the time it was unavailable — SIGTERM, graceful stop, `DOWN`, start — is recorded too):

* until every SecureVM is `Ready` on a compliant node (the operator reconnected and finished the
  relocation), with no VMI migrated twice at once and no VM left on the revoked node;
* until every healthy node's verdict rests on evidence answering a nonce issued after the outage
  (agents and verifier reconnected); the broken node stays revoked until it is healed, and is
  verified again after.

`TRIALS` trials per component (5 by default, `SOD_CONTROLPLANE_TRIALS`). No process is
restarted by hand. Like a Deployment's restart policy, a supervisor restarts `sod-operator` if
it exits (e.g. it stepped down after losing its Lease): restarts are counted and reported;
virt-controller runs under the bed's own restart loop (it exits when it loses its Lease).
Agents and the verifier are not supervised: if one exits the trial fails. Figures (seconds to
recover) go to docs/RELIABILITY.md.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.nodes import parse_nodes
from sod_testbed.trust import TrustBed

from tests.e2e.harness import condition, newest_verified, vm_manifest, wait_for
from tests.e2e.operator_run import OperatorProcess, install_catalog
from tests.reliability.bed import PrivateBed
from tests.reliability.figures import record

RELIABILITY_ITEM = "2"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

SOD = "sod.dev/v1alpha1"
KV = "kubevirt.io/v1"
NS = "controlplane"
NODES = ("hyperwall-1", "hyperwall-2", "hyperwall-3")
VMS = 10
DOWN = float(os.environ.get("SOD_CONTROLPLANE_DOWN_SECONDS", "5"))
TRIALS = int(os.environ.get("SOD_CONTROLPLANE_TRIALS", "5"))
REQUEST = {"options": ["Basic", "HypervisorProtection"]}
LEASE_FLAGS = ("--lease-seconds", "15", "--renew-seconds", "10", "--retry-seconds", "2")


class Supervised:
    """`sod-operator`, restarted when it exits (what a Deployment's kubelet does)."""

    def __init__(self, op: OperatorProcess):
        self.op = op
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Supervised:
        self.op.start()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            proc = self.op.proc
            if proc is not None and proc.poll() is not None:
                self.restarts += 1
                self.op.spawn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.op.stop()


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateBed, TrustBed]]:
    bed = PrivateBed(
        tmp_path_factory.mktemp("controlplane-bed"),
        parse_nodes("hyperwall=3"),
        PlayerConfig(time_scale=0.05, resync_seconds=2.0),
    )
    try:
        bed.start()
        api = bed.cluster.api()
        install_catalog(api)
        trust = bed.start_trust_monitor()
        wait_for(lambda: verified(api), lambda v: v == set(NODES), "every node verified", 90)
        api.create(
            resource_path("v1", "namespaces"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        )
        bed.cluster.wait_for_service_account(NS, timeout=30)
        yield bed, trust
    finally:
        bed.stop()


def verified(api: KubeApi) -> set[str]:
    """The nodes carrying the verifier's HyperWall label (an empty set while the API is down)."""
    try:
        nodes = api.list(resource_path("v1", "nodes"))["items"]
    except (ApiError, OSError):
        return set()
    key = profile_label("hyperwall")
    return {n["metadata"]["name"] for n in nodes if n["metadata"]["labels"].get(key)}


def securevms(api: KubeApi) -> list[JsonObj]:
    return list(api.list(resource_path(SOD, "securevms", NS))["items"])


def placement(api: KubeApi) -> dict[str, str]:
    return {
        s["metadata"]["name"]: (s.get("status") or {}).get("nodeName", "") for s in securevms(api)
    }


def all_compliant(api: KubeApi, allowed: set[str]) -> bool:
    try:
        svms = securevms(api)
    except (ApiError, OSError):
        return False
    return len(svms) == VMS and all(
        (condition(s, "Ready") or {}).get("status") == "True"
        and (s.get("status") or {}).get("nodeName") in allowed
        and not (s.get("status") or {}).get("relocation")
        for s in svms
    )


def fresh_verdicts(api: KubeApi, nodes: set[str], after: dt.datetime) -> bool:
    """Each of `nodes` is verified on evidence answering a nonce issued after `after` (written
    to its status, or renewed for the fleet)."""
    for node in nodes:
        try:
            when = newest_verified(api, node, "hyperwall")
        except (ApiError, OSError):
            return False
        if when is None or when <= after:
            return False
    return True


def migrations_overlap(api: KubeApi) -> list[str]:
    """VMIs with two migrations whose lifetimes overlap (from the recorded phase timestamps)."""
    items = api.list(resource_path(KV, "virtualmachineinstancemigrations", NS))["items"]
    spans: dict[str, list[tuple[str, str]]] = {}
    for m in items:
        ts = [t["phaseTransitionTimestamp"] for t in (m.get("status") or {}).get(
            "phaseTransitionTimestamps", [])]  # fmt: skip
        if ts:
            spans.setdefault(m["spec"]["vmiName"], []).append((min(ts), max(ts)))
    out = []
    for vmi, s in spans.items():
        s.sort()
        out += [f"{vmi}: {a} and {b}" for a, b in itertools.pairwise(s) if b[0] < a[1]]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd", "virt-controller", "virt-api"])
def test_control_plane_restart_during_relocation(
    bed: tuple[PrivateBed, TrustBed], component: str, tmp_path: Path
):
    private, trust = bed
    api = private.cluster.api()
    op = Supervised(
        OperatorProcess(private.cluster.kubeconfig, NS, tmp_path / "operator.log", *LEASE_FLAGS)
    ).start()
    results: list[dict[str, Any]] = []
    try:
        if not securevms(api):
            template = vm_manifest("x", memory="128Mi")["spec"]
            for i in range(VMS):
                api.create(
                    resource_path(SOD, "securevms", NS),
                    {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": f"vm-{i}"},
                     "spec": {"security": REQUEST, "template": template}},
                )  # fmt: skip
        wait_for(lambda: all_compliant(api, set(NODES)), bool, "SecureVMs Ready", 120)
        for trial in range(TRIALS):
            counts: dict[str, int] = {}
            for node in placement(api).values():
                counts[node] = counts.get(node, 0) + 1
            broken = max(sorted(counts), key=lambda n: counts[n])
            healthy = set(NODES) - {broken}
            moving = counts[broken]
            trust.break_node(broken, "violation")
            wait_for(
                lambda: api.list(resource_path(KV, "virtualmachineinstancemigrations", NS)),
                lambda ms: any(
                    (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    for m in ms["items"]
                ),
                "a migration under way",
                60,
            )
            t_stop = time.monotonic()
            argv = private.stop_component(component)
            time.sleep(DOWN)
            private.start_component(component, argv)
            up_wall, up = dt.datetime.now(dt.UTC), time.monotonic()
            wait_for(lambda h=healthy: all_compliant(api, h), bool, "all compliant again", 180)
            converged = time.monotonic() - up
            wait_for(
                lambda h=healthy, t=up_wall: fresh_verdicts(api, h, t), bool, "fresh verdicts", 120
            )
            fresh = time.monotonic() - up
            assert broken not in verified(api), "the broken node was verified again"
            overlaps = migrations_overlap(api)
            for name in (
                n for n in private.cluster.processes if n.startswith(("agent-", "verifier"))
            ):
                assert private.cluster.processes[name].alive(), f"{name} exited"
            trust.heal_node(broken)
            t_heal = time.monotonic()
            wait_for(lambda: verified(api), lambda v: v == set(NODES), "healed node verified", 120)
            results.append({
                "trial": trial + 1, "revoked": broken, "vms_moving": moving,
                "down_s": DOWN, "unavailable_s": round(up - t_stop, 1),
                "seconds_up_to_all_compliant": round(converged, 1),
                "seconds_up_to_fresh_verdicts_all_nodes": round(fresh, 1),
                "seconds_heal_to_verified": round(time.monotonic() - t_heal, 1),
                "overlapping_migrations": overlaps,
            })  # fmt: skip
            assert not overlaps, overlaps
    finally:
        op.stop()
    tracebacks = op.op.log(50_000_000).count("Traceback")
    record(
        "2",
        f"{component} stopped, {DOWN:.0f} s down, restarted during relocation",
        len(results),
        f"operator, agents and verifier reconnected without help; all SecureVMs compliant "
        f"after max {max(r['seconds_up_to_all_compliant'] for r in results)} s; "
        f"operator restarts by its supervisor: {op.restarts}; {tracebacks} tracebacks",
        trials_detail=results,
        operator_restarts=op.restarts,
    )
    assert tracebacks == 0, op.op.log(6000)
