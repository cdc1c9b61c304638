"""The verifier's shell around the pure step: queue, caches, writes, conflicts, reloads.

An in-memory `KubeIO` double records the writes (status, labels, Events) so each
reconcile's effect is checked without an apiserver; the evidence is the recorded swtpm
golden data. Covers: one reconcile writing status,
labels and Events, and a second one writing nothing; a 409 leading to a fresh read and no
label change; a node without attestation losing our labels; a failed reconcile retried after
a per-node back-off (the queue itself: tests/unit/kube); the one-EK-one-node index;
policies parsed once per profile version; the CA bundle reloaded when its file changes.
The real apiserver path is tests/e2e/test_trust.py.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_KEY,
    RENEWALS_KEY,
    ChallengeList,
    RenewalList,
)
from sod_operator.kube import ApiError, Backoff, RateLimiter, WorkQueue
from sod_operator.verifier.controller import BundleSource, NodeInfo, NotLeading, Verifier
from sod_operator.verifier.kube import CHALLENGES
from sod_operator.verifier.renewals import BatchSettings, RenewalBatch

from tests.unit.attestation.conftest import GOLDEN, PUBLISHED, step
from tests.unit.attestation.golden import SeededEntropy

Obj = dict[str, Any]


class FakeIO:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        """What the apiserver holds: `replace_status` returns the whole object, as it does."""
        self.statuses: list[tuple[str, Obj]] = []
        self.labels: list[tuple[str, dict[str, str | None]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.conflict_once = False
        self.fresh: Obj | None = None
        self.rv = 100
        self.challenges = _challenges(PUBLISHED, "1")
        """The challenges ConfigMap as the apiserver holds it."""
        self.published: list[ChallengeList] = []

        self.renewals: Obj | None = None
        """The renewals ConfigMap (None: not created yet)."""
        self.renewals_written: list[RenewalList] = []

    def get_configmap(self, kind: str) -> Obj | None:
        return copy.deepcopy(self.challenges if kind == CHALLENGES else self.renewals)

    def get_challenges(self) -> Obj | None:
        return self.get_configmap(CHALLENGES)

    def publish(
        self, kind: str, content: ChallengeList | RenewalList, resource_version: str
    ) -> Obj:
        held = self.challenges if kind == CHALLENGES else self.renewals
        if resource_version != ((held or {}).get("metadata") or {}).get("resourceVersion", ""):
            raise ApiError("PUT", kind, 409, {"reason": "Conflict"})
        self.rv += 1
        if isinstance(content, ChallengeList):
            self.published.append(content)
            self.challenges = _challenges(content, str(self.rv))
            return copy.deepcopy(self.challenges)
        self.renewals_written.append(content)
        data = {RENEWALS_KEY: content.model_dump_json(by_alias=True)}
        self.renewals = {
            "metadata": {"name": "sod-attestation-renewals", "resourceVersion": str(self.rv)},
            "data": data,
        }
        return copy.deepcopy(self.renewals)

    def replace_status(self, name: str, resource_version: str, status: Obj) -> Obj:
        if self.conflict_once:
            self.conflict_once = False
            raise ApiError("PUT", name, 409, {"reason": "Conflict"})
        self.rv += 1
        self.statuses.append((name, status))
        obj = copy.deepcopy(self.objects[name])
        obj["metadata"]["resourceVersion"] = str(self.rv)
        obj["status"] = status
        self.objects[name] = obj
        return obj

    def get_attestation(self, name: str) -> Obj | None:
        return self.fresh

    def patch_node_labels(self, node: str, labels: dict[str, str | None]) -> None:
        self.labels.append((node, labels))

    def create_event(self, involved: Obj, event_type: str, reason: str, message: str,
                     now: datetime) -> None:  # fmt: skip
        self.events.append((involved["kind"], reason, message))


def _challenges(published: ChallengeList, rv: str) -> Obj:
    return {"metadata": {"name": "sod-attestation-challenges", "resourceVersion": rv},
            "data": {CHALLENGES_KEY: published.model_dump_json(by_alias=True)}}  # fmt: skip


def _obj(name: str, s: Any, rv: int = 50) -> Obj:
    return {"apiVersion": "sod.dev/v1alpha1", "kind": "NodeAttestation",
            "metadata": {"name": name, "generation": s.generation, "resourceVersion": str(rv),
                         "uid": "u-1"},
            "spec": copy.deepcopy(s.spec), "status": copy.deepcopy(s.status_before)}  # fmt: skip


def _profile(name: str, rv: str = "1") -> Obj:
    golden = [{"index": int(i), "values": [v]} for i, v in GOLDEN["goldenPcrs"].items()]
    return {"metadata": {"name": name, "resourceVersion": rv},
            "spec": {"attestation": {"tpm": {"pcrs": golden}}}}  # fmt: skip


def _verifier(tmp_path: Path, now: datetime) -> tuple[Verifier, FakeIO]:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(GOLDEN["caBundle"])
    io = FakeIO()
    v = Verifier(io, BundleSource(bundle), clock=lambda: now, entropy=SeededEntropy(b"v"))  # type: ignore[arg-type]
    real = v._on_attestation

    def on_attestation(kind: str, obj: Obj) -> None:  # the fake apiserver sees it too
        if kind in ("ADDED", "MODIFIED"):
            io.objects[obj["metadata"]["name"]] = copy.deepcopy(obj)
        real(kind, obj)

    v._on_attestation = on_attestation  # type: ignore[method-assign]
    v._on_challenges("SYNCED", {"items": [io.get_challenges()]})
    v._on_renewals("SYNCED", {"items": []})
    return v, io


def test_two_nodes_with_one_ek_finishing_enrollment_at_once_enroll_it_once(
    tmp_path: Path,
) -> None:
    s = step("enrolled")  # the answer to the credential-activation challenge
    v, io = _verifier(tmp_path, s.now)
    real = io.replace_status

    def slow_write(name: str, resource_version: str, status: Obj) -> Obj:
        time.sleep(0.2)  # both steps would run before either write lands, without the lock
        return real(name, resource_version, status)

    io.replace_status = slow_write  # type: ignore[method-assign]
    for name in ("node-1", "node-2"):
        v._on_node("ADDED", {"metadata": {"name": name, "uid": name, "labels": {}}})
        v._on_attestation("ADDED", _obj(name, s))
    workers = [threading.Thread(target=v.reconcile, args=(n,)) for n in ("node-1", "node-2")]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    enrolled = {
        n for n, st in io.statuses if (st.get("enrollment") or {}).get("state") == "Enrolled"
    }
    assert len(enrolled) == 1, io.statuses
    (loser,) = {"node-1", "node-2"} - enrolled
    last = [st for n, st in io.statuses if n == loser][-1]
    assert {c["type"]: c["reason"] for c in last["conditions"]}["Enrolled"] == "EkAlreadyEnrolled"


def test_a_reconcile_writes_status_labels_and_events_then_nothing(tmp_path: Path) -> None:
    s = step("good")
    v, io = _verifier(tmp_path, s.now)
    v._on_profile("ADDED", _profile("tpm"))
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", s))
    delay = v.reconcile("node-1")
    assert delay is not None
    assert 0 < delay <= 61
    assert io.statuses[0][1]["verifiedProfiles"] == ["tpm"]
    assert io.labels == [("node-1", {profile_label("tpm"): "verified"})]
    # The recorded status had hyperwall verified; this catalog has no such profile anymore.
    revoked = [(k, m) for k, r, m in io.events if r == "ProfileRevoked"]
    assert {k for k, _ in revoked} == {"Node", "NodeAttestation"}
    assert all("'hyperwall' revoked" in m for _, m in revoked)
    writes = (len(io.statuses), len(io.labels), len(io.events))
    v.reconcile("node-1")  # the cache now holds what was written
    assert (len(io.statuses), len(io.labels), len(io.events)) == writes


def test_a_conflict_rereads_and_retries_without_touching_labels(tmp_path: Path) -> None:
    s = step("good")
    v, io = _verifier(tmp_path, s.now)
    v._on_profile("ADDED", _profile("tpm"))
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", s))
    io.conflict_once, io.fresh = True, _obj("node-1", s, rv=77)
    assert v.reconcile("node-1") == 0.0
    assert io.labels == []
    assert v.caches.attestations["node-1"]["metadata"]["resourceVersion"] == "77"


def test_a_node_without_attestation_loses_our_labels_only(tmp_path: Path) -> None:
    v, io = _verifier(tmp_path, step("good").now)
    labels = {profile_label("tpm"): "verified", "kubernetes.io/os": "linux"}
    v.caches.nodes["lonely"] = NodeInfo(uid="x", labels=dict(labels))
    assert v.reconcile("lonely") is None
    assert io.labels == [("lonely", {profile_label("tpm"): None})]


def test_a_failed_reconcile_backs_off_per_node_and_a_success_forgets_it(tmp_path: Path) -> None:
    v, io = _verifier(tmp_path, step("good").now)
    v.caches.nodes["lonely"] = NodeInfo(uid="x", labels={profile_label("tpm"): "verified"})
    down = ApiError.no_answer("PATCH", "/api/v1/nodes/lonely", ConnectionRefusedError())

    def unreachable(node: str, labels: dict[str, str | None]) -> None:
        raise down

    io.patch_node_labels = unreachable  # type: ignore[method-assign]
    v.queue = WorkQueue(RateLimiter(Backoff(base=60.0)))  # long enough never to come due here
    for failures in (1, 2):
        v.queue.add("lonely")
        assert v.queue.get(1) == "lonely"
        v.process("lonely")
        assert v.queue.num_requeues("lonely") == failures
        assert v.queue.get(timeout=0) is None  # not again at once: it waits out its back-off
    del io.patch_node_labels  # the apiserver is back
    v.queue.add("lonely")  # e.g. the resync, sooner than the back-off
    assert v.queue.get(1) == "lonely"
    v.process("lonely")
    assert v.queue.num_requeues("lonely") == 0
    assert io.labels == [("lonely", {profile_label("tpm"): None})]


def test_an_ek_enrolled_by_another_node_is_refused(tmp_path: Path) -> None:
    enrolled, fresh = step("good"), step("identity")
    v, io = _verifier(tmp_path, fresh.now)
    v._on_attestation("ADDED", _obj("node-1", enrolled))
    v._on_node("ADDED", {"metadata": {"name": "node-2", "uid": "n-2", "labels": {}}})
    v._on_attestation("ADDED", {**_obj("node-2", fresh), "status": {}})
    v.reconcile("node-2")
    status = io.statuses[-1][1]
    assert status.get("enrollment") is None
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Enrolled"] == "EkAlreadyEnrolled"


def test_policies_are_parsed_once_per_profile_version(tmp_path: Path) -> None:
    v, _ = _verifier(tmp_path, step("good").now)
    v._on_profile("ADDED", _profile("tpm", "1"))
    first = v.policies()["tpm"]
    assert v.policies()["tpm"] is first
    v._on_profile("MODIFIED", _profile("tpm", "2"))
    assert v.policies()["tpm"] is not first
    v._on_profile("DELETED", _profile("tpm", "2"))
    assert v.policies() == {}


def test_the_bundle_is_reloaded_when_its_file_changes(tmp_path: Path) -> None:
    v, _ = _verifier(tmp_path, step("good").now)
    path = v.bundle.path
    assert not v.bundle.reload_if_changed()
    path.write_text(GOLDEN["rogueCaBundle"])
    os.utime(path, (1, 1))
    assert v.bundle.reload_if_changed()
    path.write_text("not a bundle")
    os.utime(path, (2, 2))
    assert not v.bundle.reload_if_changed()  # a broken file keeps the previous bundle
    assert v.bundle.bundle.roots


def test_platform_enrollments_decide_which_architecture_a_node_may_be_verified_for(
    tmp_path: Path,
) -> None:
    """The verifier watches PlatformEnrollments: enrolled for hyperwall, the node is verified
    for a hyperwall profile; re-enrolled as plain, the same genuine evidence is not."""
    from tests.unit.attestation.conftest import ENROLLMENTS

    [ek] = ENROLLMENTS
    s = step("good")
    v, io = _verifier(tmp_path, s.now)
    profile = _profile("hyperwall")
    profile["spec"]["attestation"]["architecture"] = "hyperwall"
    v._on_profile("ADDED", profile)
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", s))

    def enroll(kind: str, architecture: str) -> None:
        spec = {"architecture": architecture, "ekPublicKeySha256": ek}
        v._on_platform(kind, {"metadata": {"name": "machine-1"}, "spec": spec})

    def reasons() -> dict[str, str]:
        v.reconcile("node-1")
        return {x["profile"]: x["reason"] for x in io.statuses[-1][1]["verdicts"]}

    v._on_platform("SYNCED", {"items": []})
    assert reasons() == {"hyperwall": "ArchitectureNotEnrolled"}
    enroll("ADDED", "hyperwall")
    assert reasons() == {"hyperwall": "Verified"}
    assert io.labels[-1] == ("node-1", {profile_label("hyperwall"): "verified"})
    enroll("MODIFIED", "plain")
    assert reasons() == {"hyperwall": "ArchitectureNotEnrolled"}
    assert io.labels[-1] == ("node-1", {profile_label("hyperwall"): None})
    enroll("ADDED", "hyperwall")
    v._on_platform("DELETED", {"metadata": {"name": "machine-1"}})
    assert reasons() == {"hyperwall": "ArchitectureNotEnrolled"}


def test_a_replica_without_the_lease_writes_nothing_and_a_new_leader_judges_every_node(
    tmp_path: Path,
) -> None:
    s = step("good")
    v, io = _verifier(tmp_path, s.now)
    v._on_profile("ADDED", _profile("tpm"))
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", s))
    v.follow()  # lost the Lease (or never held it): a reconcile under way must not write
    with pytest.raises(NotLeading):
        v.reconcile("node-1")
    assert (io.statuses, io.labels) == ([], [])
    while (key := v.queue.get(timeout=0)) is not None:  # the handlers' own enqueues
        v.queue.done(key)
    v.lead()  # the previous leader's deadlines died with it: every node is looked at now
    assert v.queue.get(timeout=0) == "node-1"
    v.reconcile("node-1")
    assert io.statuses[0][1]["verifiedProfiles"] == ["tpm"]


def _synced(v: Verifier) -> None:
    for kind in (v._on_attestation, v._on_profile, v._on_platform, v._on_node):
        kind("SYNCED", {"items": []})


def test_the_leader_publishes_the_next_nonce_when_one_is_due_and_a_follower_never(
    tmp_path: Path,
) -> None:
    newest = PUBLISHED.newest
    assert newest is not None
    v, io = _verifier(tmp_path, newest.issued_time + timedelta(seconds=11))
    _synced(v)
    v._on_profile("ADDED", _profile("tpm"))
    v.follow()
    v._rotate_if_due()
    assert io.published == []
    v.lead()
    v._rotate_if_due()
    [published] = io.published
    assert published.newest is not None
    assert published.newest.issued_time == newest.issued_time + timedelta(seconds=11)
    assert newest in published.challenges  # still young enough to be answered
    assert v.caches.challenges == published  # cached from the write's response at once
    v._rotate_if_due()
    assert len(io.published) == 1  # not due again before the interval


def test_a_quote_over_a_nonce_our_watch_has_not_delivered_yet_is_not_rejected(
    tmp_path: Path,
) -> None:
    """An agent's watch can be quicker than the verifier's: the reconcile reads the list anew
    instead of revoking the node for a nonce it published itself."""
    s = step("good")
    v, io = _verifier(tmp_path, s.now)
    v._on_challenges("MODIFIED", _challenges(ChallengeList(), "0"))  # our cache lags behind
    v._on_challenges("SYNCED", {"items": [_challenges(ChallengeList(), "")]})
    v._on_profile("ADDED", _profile("tpm"))
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", s))
    v.reconcile("node-1")
    assert io.statuses[0][1]["verifiedProfiles"] == ["tpm"]
    assert v.caches.challenges == PUBLISHED


def _quiet_round(tmp_path: Path) -> tuple[Verifier, FakeIO, Obj, Callable[[float], datetime]]:
    """A verifier that wrote node-1's first verified round, then received the next round
    (a new quote, the same claims and PCRs): (verifier, apiserver, the written status, the
    time when a share of the tpm verdict's lifetime is spent)."""
    first, later = step("good"), step("good2")
    v, io = _verifier(tmp_path, first.now)
    v.renewal_batch = RenewalBatch(BatchSettings(window=0.0))
    v.synced = lambda: True  # type: ignore[method-assign]
    v._on_profile("ADDED", _profile("tpm"))
    v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
    v._on_attestation("ADDED", _obj("node-1", first))
    v.reconcile("node-1")
    [(_, written)] = io.statuses
    [tpm] = [x for x in written["verdicts"] if x["profile"] == "tpm"]
    evidence, expiry = (datetime.fromisoformat(tpm[k]) for k in ("evidenceTime", "expiryTime"))
    quiet = _obj("node-1", later, rv=io.rv + 1)
    quiet["status"] = copy.deepcopy(written)
    v._on_attestation("MODIFIED", quiet)
    return v, io, written, lambda share: evidence + (expiry - evidence) * share


def test_a_round_saying_nothing_new_is_renewed_in_the_fleet_configmap_not_the_status(
    tmp_path: Path,
) -> None:
    v, io, written, spent = _quiet_round(tmp_path)
    v.clock = lambda: spent(0.5)  # half the lifetime spent
    v.reconcile("node-1")
    assert len(io.statuses) == 1  # no status write
    assert v.renewal_batch.due
    v._publish_renewals()
    [renewals] = io.renewals_written
    renewal = renewals.renewals["node-1"]
    assert renewal.evidence_time > spent(0)
    assert renewal.content_sha256 == written["evidence"]["contentSha256"]
    assert not v.renewal_batch.due

    v.clock = lambda: spent(0.75)  # the status fallback's moment
    v.reconcile("node-1")
    assert len(io.statuses) == 1  # the published renewal keeps it alive: still no status write
    assert io.renewals_written == [renewals]


def test_renewals_that_cannot_be_published_fall_back_to_a_status_write(tmp_path: Path) -> None:
    v, io, _, spent = _quiet_round(tmp_path)

    def too_large(kind: str, content: object, resource_version: str) -> Obj:
        raise ApiError("PUT", kind, 422, {"reason": "Invalid", "message": "too long"})

    io.publish = too_large  # type: ignore[method-assign]
    v.clock = lambda: spent(0.5)
    v.reconcile("node-1")
    v._publish_renewals()
    assert v.renewal_batch.due  # still waiting to be written
    v.clock = lambda: spent(0.75)
    v.reconcile("node-1")
    assert len(io.statuses) == 2  # the status renewal took over
