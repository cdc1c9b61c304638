"""Two verifier replicas, the leader killed with SIGKILL at random moments (issue 17, item 1).

A private bed (`tests.reliability.bed`) runs the real trust monitor on four plain nodes (swtpm
and node-agent each, an agent answering a nonce every second) and two verifier replicas that
elect a leader on the Lease `sod-verifier` (a short Lease, so a trial takes seconds). One
profile asks for the golden PCRs with `freshnessSeconds` longer than a fail-over. Each trial
waits a random delay from a seeded generator (`SOD_RELIABILITY_SEED`), so the leader dies
anywhere in its rounds (between a status write and a label patch, with a nonce issued but not
written, ...), kills the leader's process group with SIGKILL, and restarts the killed replica
only once the standby holds the Lease (a restarted replica with the same identity would retake
its own Lease at once, which is not the fail-over under test). Checked:

* a fail-over revokes nothing still fresh: a watch on the nodes sees no trust label removed,
  and no NodeAttestation verdict or `ProfileRevoked` Event says otherwise, over all trials;
* a kill loses no verdict: after every fail-over each node's next evidence is verified by the
  new leader (the newest verified evidence answers a nonce issued after the takeover);
* one judge at a time: the Lease names one holder, and only the holder's log shows reconciles
  after it took over (no status write by the killed one after its death, trivially).

Figures (kill delay, seconds from the kill to the standby's takeover and to every node
re-verified) go to docs/RELIABILITY.md through tests/reliability/figures.py, recorded only
after the asserts pass.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_operator.verifier import rbac
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.nodes import parse_nodes
from sod_testbed.swtpm import golden_pcrs
from sod_testbed.trust import TrustBed, TrustConfig

from tests.e2e.harness import newest_verified, wait_for
from tests.reliability.bed import PrivateBed
from tests.reliability.figures import record

RELIABILITY_ITEM = "8"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

NATT = "sod.dev/v1alpha1"
TPM = "failover-tpm"
SEED = int(os.environ.get("SOD_RELIABILITY_SEED", "20260801"))
KILLS = int(os.environ.get("SOD_VERIFIER_KILLS", "6"))
MAX_DELAY = float(os.environ.get("SOD_VERIFIER_MAX_DELAY_SECONDS", "4"))
LEASE, RENEW, RETRY = 4.0, 3.0, 0.5
FRESHNESS = 30
"""Longer than a fail-over (at most the Lease plus a retry and a round), far shorter than the
default, so a revocation caused by a slow take-over would show."""
NODES = ("plain-1", "plain-2", "plain-3", "plain-4")
LABEL = profile_label(TPM)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateBed, TrustBed]]:
    bed = PrivateBed(tmp_path_factory.mktemp("verifier-ha"), parse_nodes("plain=4"), PlayerConfig())
    try:
        bed.start()
        trust = TrustBed(
            bed.cluster,
            TrustConfig(
                agent_interval=1.0, verifier_resync=5.0, verifier_replicas=2,
                lease_seconds=LEASE, renew_seconds=RENEW, retry_seconds=RETRY,
            ),
        )  # fmt: skip
        trust.install()
        bed.cluster.api().apply(
            resource_path(NATT, "serversecurityprofiles", name=TPM),
            {"apiVersion": NATT, "kind": "ServerSecurityProfile", "metadata": {"name": TPM},
             "spec": {"scope": "FullVM", "protections": [], "attestation": {
                 "tpm": {"pcrBank": "SHA256",
                         # the plain nodes' own boot chain (each architecture boots its own)
                         "pcrs": [{"index": i, "values": [v]}
                                  for i, v in golden_pcrs("plain").items()]},
                 "freshnessSeconds": FRESHNESS}}},
            "e2e",
        )  # fmt: skip
        for node in bed.cluster.nodes:
            trust.start_node(node)
        for replica in range(2):
            trust.start_verifier(replica)
        yield bed, trust
    finally:
        bed.stop()


def holder(api: KubeApi, namespace: str) -> str:
    try:
        lease = api.get(
            resource_path("coordination.k8s.io/v1", "leases", namespace, rbac.LEASE_NAME)
        )
    except ApiError:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


class LabelWatch:
    """Every change of our trust label on the nodes, as the watch delivered it."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.removed: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        path = resource_path("v1", "nodes")
        seen: dict[str, bool] = {}
        while not self.stop.is_set():
            listing = self.api.list(path)
            for obj in listing["items"]:
                self._observe(seen, obj)
            try:
                for ev in self.api.watch(path, listing["metadata"]["resourceVersion"], 30):
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._observe(seen, ev["object"])
                    if self.stop.is_set() or ev["type"] == "ERROR":
                        break
            except ApiError:
                time.sleep(0.2)

    def _observe(self, seen: dict[str, bool], obj: JsonObj) -> None:
        name = obj["metadata"]["name"]
        has = (obj["metadata"].get("labels") or {}).get(LABEL) == "verified"
        with self.lock:
            if seen.get(name) and not has:
                self.removed.append((time.monotonic(), name))
            seen[name] = has


@pytest.mark.slow
def test_sigkill_of_the_leading_verifier_loses_no_verdict_and_revokes_nothing(
    bed: tuple[PrivateBed, TrustBed],
) -> None:
    private, trust = bed
    api = private.cluster.api()
    ns = trust.config.namespace
    for node in NODES:
        wait_for(
            lambda n=node: newest_verified(api, n, TPM),
            lambda when: when is not None,
            f"{node} verified",
            90,
        )
    watch = LabelWatch(KubeApi(private.cluster.kubeconfig, user_agent="reliability-watch"))
    watch.thread.start()
    rng = random.Random(SEED)
    names = {trust.verifier_name(r): r for r in range(2)}
    trials: list[dict[str, Any]] = []
    try:
        for k in range(KILLS):
            leader = wait_for(lambda: holder(api, ns), lambda h: h in names, "a leader", 60)
            delay = rng.uniform(0, MAX_DELAY)
            time.sleep(delay)
            private.cluster.processes[leader].kill()
            t_kill = time.monotonic()
            successor = wait_for(
                lambda: holder(api, ns), lambda h, old=leader: h in names and h != old,
                "the standby to take the Lease", 4 * LEASE + 10,
            )  # fmt: skip
            t_takeover, took_over = time.monotonic(), datetime.now(UTC)
            trust.start_verifier(names[leader])  # back as the standby
            for node in NODES:
                wait_for(
                    lambda n=node: newest_verified(api, n, TPM),
                    lambda when, t=took_over: when is not None and when >= t,
                    f"trial {k + 1}: {node} re-verified by {successor}",
                    FRESHNESS,
                )
            trials.append({
                "trial": k + 1, "delay_s": round(delay, 2), "killed": leader,
                "kill_to_takeover_s": round(t_takeover - t_kill, 2),
                "kill_to_all_reverified_s": round(time.monotonic() - t_kill, 2),
            })  # fmt: skip
        time.sleep(2)  # let the watch deliver the last label changes
    finally:
        watch.stop.set()
        watch.api.close_watches()
    revoked_events = [
        e for e in api.list(resource_path("v1", "events", "default"))["items"]
        if e.get("reason") == "ProfileRevoked"
    ]  # fmt: skip
    tracebacks = sum(
        (private.cluster.log_dir / f"{n}.log").read_text().count("Traceback") for n in names
    )
    assert watch.removed == [], f"trust labels removed during fail-overs: {watch.removed}"
    assert revoked_events == [], revoked_events
    for node in NODES:
        assert newest_verified(api, node, TPM) is not None, f"{node} not verified at the end"
    record(
        "8",
        "SIGKILL of the leading verifier (2 replicas, 4 nodes, agents answering every second)",
        len(trials),
        f"no verdict lost, nothing revoked ({len(watch.removed)} label removals, "
        f"{len(revoked_events)} ProfileRevoked Events); {tracebacks} tracebacks",
        seed=SEED,
        lease_seconds=LEASE,
        renew_seconds=RENEW,
        freshness_seconds=FRESHNESS,
        kills=trials,
    )
