"""The verifier's control loop: caches → one pure step per node → status, labels, Events.

Level-triggered: watch events only say *which* node to look at; `reconcile(node)` reads the
caches, runs `attestation.monitor.step` with the verifier's clock and randomness, and writes
what differs (status with optimistic concurrency, our label keys, Events, metrics). A delayed
work queue (`sod_operator.kube.WorkQueue`) wakes a node again at its next deadline (an expiry,
i.e. the freshness timer), retries a failed reconcile after a per-node exponential back-off,
and a periodic resync re-looks at everything, so a missed event or a restart loses nothing.
A node without a NodeAttestation (or whose agent never enrolled) gets no trust labels.

The leader also publishes the fleet's nonces (`attestation.challenges`): a new one every
`challenge_interval_seconds` into one ConfigMap, which every agent watches. A quote answering a
nonce the cache does not list yet (an agent's watch was quicker than ours) makes the reconcile
read the ConfigMap once before judging, so a slow watch never revokes a node. And it publishes
the fleet's expiry renewals (`verifier.renewals`) into another ConfigMap, which the operator
watches: a round that says nothing new costs no status write.

More than one replica: every replica keeps its caches warm, but only the one holding the
verifier's Lease (`sod_operator.kube.leader`, see `main.py`) reconciles: its workers wait on
`leading`. A new leader enqueues every node (the old leader's deadlines died with it); all it
needs is in the NodeAttestation status, so a fail-over loses no verdict and revokes nothing
still fresh. A replica that loses the Lease stops writing at once (`writes_allowed`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from sod_operator.api.constants import API_VERSION, PROFILE_LABEL_PREFIX
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.nodeattestation import (
    ChallengeList,
    EnrollmentState,
    NodeAttestation,
    NodeAttestationStatus,
    RenewalList,
)
from sod_operator.attestation import challenges, labels, monitor, platform
from sod_operator.attestation.ekcert import BundleError, CaBundle
from sod_operator.attestation.enroll import Entropy
from sod_operator.kube import ApiError, Backoff, RateLimiter, WorkQueue, resource_version
from sod_operator.verifier import notify
from sod_operator.verifier.kube import (
    ATTESTATIONS,
    CHALLENGES,
    CONFIGMAP_KEYS,
    NODES,
    PLATFORMS,
    PROFILES,
    RENEWALS,
    KubeIO,
    Obj,
)
from sod_operator.verifier.metrics import EvidenceAge, Metrics, evidence_ages
from sod_operator.verifier.notify import Notifier
from sod_operator.verifier.renewals import BatchSettings, RenewalBatch

log = logging.getLogger("sod.verifier")
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BundleSource:
    """The EK CA bundle file, re-read when it changes (e.g. a rotated ConfigMap)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = 0.0
        self.bundle = self._load()

    def _load(self) -> CaBundle:
        self._mtime = self.path.stat().st_mtime
        return CaBundle.from_pem(self.path.read_bytes(), source=str(self.path))

    def reload_if_changed(self) -> bool:
        try:
            if self.path.stat().st_mtime == self._mtime:
                return False
            self.bundle = self._load()
        except (OSError, BundleError) as err:
            log.error("EK CA bundle %s unusable, keeping the previous one: %s", self.path, err)
            return False
        log.info("EK CA bundle %s reloaded: %s", self.path, self.bundle.subjects)
        return True


class NotLeading(RuntimeError):
    """A write attempted by a replica that no longer holds the Lease."""


@dataclass
class NodeInfo:
    uid: str
    labels: dict[str, str]


def enrolled_fingerprint(obj: Obj) -> str | None:
    """The EK certificate a NodeAttestation object has enrolled (read from the raw dict)."""
    enrollment = (obj.get("status") or {}).get("enrollment") or {}
    if enrollment.get("state") == EnrollmentState.ENROLLED:
        fp = enrollment.get("ekCertificateSha256")
        return fp if isinstance(fp, str) else None
    return None


def _nonce(obj: Obj) -> object:
    """The nonce a NodeAttestation's quote answers (None: no quote), read from the raw dict."""
    tpm = (obj.get("spec") or {}).get("tpm") or {}
    return (tpm.get("quote") or {}).get("nonce")


@dataclass
class Caches:
    attestations: dict[str, Obj] = field(default_factory=dict)
    profiles: dict[str, Obj] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    enrolled_eks: dict[str, str] = field(default_factory=dict)
    """EK certificate fingerprint → the node that enrolled it (one TPM, one node)."""
    policies: dict[str, tuple[str, AttestationPolicy | None]] = field(default_factory=dict)
    """Profile name → (resourceVersion, parsed policy): parsed once per profile change."""
    platforms: dict[str, tuple[str, str]] = field(default_factory=dict)
    """PlatformEnrollment name → (architecture, EK fingerprint), as the platform team wrote it."""
    enrollments: platform.Enrollments = field(default_factory=dict)
    """`platforms` indexed by EK fingerprint (rebuilt on every PlatformEnrollment event)."""
    challenges: ChallengeList = field(default_factory=ChallengeList)
    """The published nonces (newest first)."""
    renewals: RenewalList = field(default_factory=RenewalList)
    """The published expiry renewals (what the operator reads)."""
    configmap_rvs: dict[str, str] = field(default_factory=dict)
    """CHALLENGES / RENEWALS → the ConfigMap's resourceVersion (absent: not there yet)."""
    lock: threading.RLock = field(default_factory=threading.RLock)

    def put_attestation(self, name: str, obj: Obj | None) -> None:
        """Store (or with None, drop) an object and keep the EK index in step (under lock)."""
        old = self.attestations.pop(name, None)
        if old is not None:
            fp = enrolled_fingerprint(old)
            if fp is not None and self.enrolled_eks.get(fp) == name:
                del self.enrolled_eks[fp]
        if obj is not None:
            self.attestations[name] = obj
            fp = enrolled_fingerprint(obj)
            if fp is not None:
                self.enrolled_eks.setdefault(fp, name)


def _put_platform(platforms: dict[str, tuple[str, str]], obj: Obj) -> None:
    """Cache one PlatformEnrollment; one the apiserver's schema should have refused is
    dropped (it enrolls nothing), never half-read."""
    name = obj["metadata"]["name"]
    spec = obj.get("spec") or {}
    architecture, ek = spec.get("architecture"), spec.get("ekPublicKeySha256")
    if isinstance(architecture, str) and isinstance(ek, str):
        platforms[name] = (architecture, ek.lower())
    else:
        platforms.pop(name, None)
        log.warning("PlatformEnrollment %s has no architecture or EK: it enrolls nothing", name)


@dataclass(frozen=True)
class VerifierConfig:
    ready_max_age_seconds: int = 120
    resync_seconds: float = 60.0
    bundle_check_seconds: float = 5.0
    workers: int = 4
    """Nodes reconciled at once. Each reconcile mostly waits on the apiserver (a status PUT), so
    a few threads overlap those round trips; one node is never reconciled by two at once."""
    retry: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=60.0))
    """After a failed reconcile (the apiserver unreachable, say): 0.5 s, 1 s, 2 s … per node."""
    challenge_interval_seconds: float = 10.0
    """A new nonce this often: the agents' rounds (the lower bound of the evidence's age)."""
    renewal_batch: BatchSettings = field(default_factory=BatchSettings)
    """How the fleet's renewals are batched into one ConfigMap write."""


class Verifier:
    def __init__(
        self,
        io: KubeIO,
        bundle: BundleSource,
        config: VerifierConfig | None = None,
        clock: Clock = utcnow,
        entropy: Entropy | None = None,
        notifier: Callable[[Metrics], Notifier] | None = None,
        leading: bool = True,
    ) -> None:
        self.io = io
        self.bundle = bundle
        self.config = config or VerifierConfig()
        self.clock = clock
        self.entropy: Entropy = entropy or os.urandom
        self.caches = Caches()
        self.queue: WorkQueue[str] = WorkQueue(RateLimiter(self.config.retry))
        self.renewal_batch = RenewalBatch(self.config.renewal_batch)
        self._wake = threading.Event()
        """Wakes the housekeeping thread early: stopping, or a round's due renewals are in."""
        self._judged: dict[str, dict[str, object]] = {}
        """Node → the verdicts of its latest step (raw), written or not: the evidence-age
        gauges report what the verifier judged, not the last renewal it wrote."""
        self.metrics = Metrics(self._verified_counts, self._evidence_ages, self.synced)
        self.metrics.renewals_due.set_function(lambda: 1.0 if self.renewal_batch.due else 0.0)
        self.notifier = notifier(self.metrics) if notifier is not None else None
        """The optional trust webhook (`verifier.notify`); built here to share the metrics."""
        self.stop_event = threading.Event()
        self.leading = threading.Event()
        """Set while this replica may reconcile (always, without leader election)."""
        if leading:
            self.leading.set()
        self.heartbeat = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._counted: dict[str, int] = {}
        """Node → the evidence generation last counted in the metrics (a round that is not
        written is judged again at the next step; it is counted once)."""
        # Two nodes presenting one EK must be judged one after the other, or both could enroll
        # it: a reconcile holds the stripe of its EK fingerprint until its status is cached.
        self._ek_locks = tuple(threading.Lock() for _ in range(64))

    # -- lifecycle

    def start(self) -> Verifier:
        handlers = {
            ATTESTATIONS: self._on_attestation,
            PROFILES: self._on_profile,
            PLATFORMS: self._on_platform,
            NODES: self._on_node,
            CHALLENGES: self._on_challenges,
            RENEWALS: self._on_renewals,
        }
        if self.notifier is not None:
            self.notifier.start()
        for kind, handler in handlers.items():
            informer = self.io.informer(kind, handler, self.stop_event).start()
            self._threads.append(informer.thread)
        workers = [
            threading.Thread(target=self._work, name=f"verifier-worker-{i}", daemon=True)
            for i in range(max(self.config.workers, 1))
        ]
        housekeeping = threading.Thread(target=self._housekeep, name="verifier-housekeeping")
        housekeeping.daemon = True
        for t in (*workers, housekeeping):
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self.notifier is not None:
            self.notifier.stop()
        self.queue.shutdown()
        self._wake.set()
        self.io.client.close_watches()

    def lead(self) -> None:
        """This replica won the Lease: judge every node now (nothing is carried over)."""
        self.leading.set()
        self.enqueue_all()

    def follow(self) -> None:
        """This replica lost the Lease: no further writes (a reconcile under way fails)."""
        self.leading.clear()

    def synced(self) -> bool:
        with self.caches.lock:
            return self.caches.synced >= {
                ATTESTATIONS, PROFILES, PLATFORMS, NODES, CHALLENGES, RENEWALS
            }  # fmt: skip

    def healthy(self) -> bool:
        return time.monotonic() - self.heartbeat < 30 and all(t.is_alive() for t in self._threads)

    # -- event handlers (only record and enqueue)

    def _on_attestation(self, kind: str, obj: Obj) -> None:
        c = self.caches
        with c.lock:
            if kind == "SYNCED":
                names = {i["metadata"]["name"] for i in obj["items"]}
                for gone in set(c.attestations) - names:
                    c.put_attestation(gone, None)
                    self.queue.add(gone)
                c.synced.add(ATTESTATIONS)
                return
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                c.put_attestation(name, None)
            elif resource_version(obj) >= resource_version(c.attestations.get(name, {})):
                c.put_attestation(name, obj)
        self.queue.add(name)

    def _on_profile(self, kind: str, obj: Obj) -> None:
        c = self.caches
        with c.lock:
            if kind == "SYNCED":
                names = {i["metadata"]["name"] for i in obj["items"]}
                for gone in set(c.profiles) - names:
                    del c.profiles[gone]
                c.synced.add(PROFILES)
            elif kind == "DELETED":
                c.profiles.pop(obj["metadata"]["name"], None)
            else:
                c.profiles[obj["metadata"]["name"]] = obj
        self.enqueue_all()

    def _on_platform(self, kind: str, obj: Obj) -> None:
        c = self.caches
        with c.lock:
            if kind == "SYNCED":
                c.platforms = {}
                for item in obj["items"]:
                    _put_platform(c.platforms, item)
                c.synced.add(PLATFORMS)
            elif kind == "DELETED":
                c.platforms.pop(obj["metadata"]["name"], None)
            else:
                _put_platform(c.platforms, obj)
            c.enrollments = platform.index(
                (name, arch, ek) for name, (arch, ek) in c.platforms.items()
            )
        self.enqueue_all()

    def _on_node(self, kind: str, obj: Obj) -> None:
        c = self.caches
        with c.lock:
            if kind == "SYNCED":
                names = {i["metadata"]["name"] for i in obj["items"]}
                for gone in set(c.nodes) - names:
                    del c.nodes[gone]
                c.synced.add(NODES)
                return
            meta = obj.get("metadata") or {}
            name = meta["name"]
            if kind == "DELETED":
                c.nodes.pop(name, None)
                return
            new = NodeInfo(uid=meta.get("uid", ""), labels=dict(meta.get("labels") or {}))
            old = c.nodes.get(name)
            c.nodes[name] = new
        ours = {k: v for k, v in new.labels.items() if k.startswith(PROFILE_LABEL_PREFIX)}
        if old is None or ours != {
            k: v for k, v in old.labels.items() if k.startswith(PROFILE_LABEL_PREFIX)
        }:
            self.queue.add(name)  # a node appeared, or someone touched our labels

    def _on_challenges(self, kind: str, obj: Obj) -> None:
        """Cache the newest published list; nothing to enqueue: evidence answering it arrives
        as a NodeAttestation change, and a nonce dropped from it was past every freshness
        bound already."""
        self._on_configmap(CHALLENGES, kind, obj)

    def _on_renewals(self, kind: str, obj: Obj) -> None:
        """Cache the published renewals (a new leader carries on from them)."""
        self._on_configmap(RENEWALS, kind, obj)

    def _on_configmap(self, which: str, kind: str, obj: Obj) -> None:
        if kind == "SYNCED":
            items = obj["items"]
            obj = items[0] if items else {}
        self._store_configmap(which, {} if kind == "DELETED" else obj)
        if kind == "SYNCED":
            with self.caches.lock:
                self.caches.synced.add(which)

    def _store_configmap(self, which: str, obj: Obj) -> None:
        """Cache the challenges or renewals ConfigMap's content, unless older than held. One
        that does not parse is held as empty: the next publication replaces it."""
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        raw = (obj.get("data") or {}).get(CONFIGMAP_KEYS[which])
        model = ChallengeList if which == CHALLENGES else RenewalList
        try:
            parsed = model.model_validate_json(raw) if raw else model()
        except ValidationError as err:
            log.error("the %s ConfigMap does not parse, publishing anew: %s", which, err)
            parsed = model()
        with self.caches.lock:
            c = self.caches
            if rv and resource_version(obj) < int(c.configmap_rvs.get(which) or 0):
                return
            if isinstance(parsed, ChallengeList):
                c.challenges = parsed
            else:
                c.renewals = parsed
            c.configmap_rvs[which] = rv

    def enqueue_all(self) -> None:
        with self.caches.lock:
            names = set(self.caches.attestations) | set(self.caches.nodes)
        for name in names:
            self.queue.add(name)

    # -- the worker

    def _housekeep(self) -> None:
        """The leader's nonce rotation, the CA bundle's reload check and the periodic resync
        (every node enqueued)."""
        last_resync = last_bundle = time.monotonic()
        while True:
            self._wake.wait(min(self._rotate_if_due(), self._publish_renewals()))
            self._wake.clear()
            if self.stop_event.is_set():
                return
            now = time.monotonic()
            if now - last_bundle >= self.config.bundle_check_seconds:
                last_bundle = now
                if self.bundle.reload_if_changed():
                    self.enqueue_all()
            if now - last_resync >= self.config.resync_seconds:
                last_resync = now
                self.enqueue_all()

    def _rotate_if_due(self) -> float:
        """Publish the next nonce when one is due (leader only); seconds until the next check."""
        tick = min(self.config.bundle_check_seconds, 1.0)
        if not self.synced() or not self.leading.is_set():
            return tick
        interval = timedelta(seconds=self.config.challenge_interval_seconds)
        with self.caches.lock:
            current = self.caches.challenges
            rv = self.caches.configmap_rvs.get(CHALLENGES, "")
        now = self.clock()
        keep_for = timedelta(seconds=monitor.useful_for(self.policies(), self._settings()))
        published = challenges.rotate(current, now, interval, keep_for, self.entropy)
        if published is not None:
            try:
                with self._api("challenges"):
                    self._store_configmap(CHALLENGES, self.io.publish(CHALLENGES, published, rv))
            except ApiError as err:
                if err.conflict:  # another writer (a former leader): re-read, retry next tick
                    self._refresh(CHALLENGES)
                else:
                    log.warning("could not publish the next nonce: %s", err)
                return tick
            except NotLeading:
                return tick
            current = published
        wait = challenges.next_rotation(current, now, interval).total_seconds()
        return max(0.05, min(tick, wait))

    def _refresh(self, which: str) -> None:
        self._store_configmap(which, self.io.get_configmap(which) or {})

    def _round_in(self) -> bool:
        """Every node's evidence answers the newest nonce and nothing waits to be judged: no
        renewal of this round is still to come."""
        if not self.queue.idle():
            return False
        with self.caches.lock:
            newest = self.caches.challenges.newest
            objs = list(self.caches.attestations.values())
        return newest is not None and all(_nonce(o) == newest.nonce for o in objs)

    def _publish_renewals(self) -> float:
        """Write the fleet's renewals when the batch says so (leader only); seconds until the
        next check."""
        tick = min(self.config.bundle_check_seconds, 1.0)
        batch = self.renewal_batch
        if not batch.due:
            return tick  # (the round's check below reads every node: only when it matters)
        wait = batch.wait(self._round_in(), time.monotonic())
        if wait is None or wait > 0 or not self.synced() or not self.leading.is_set():
            return tick if wait is None else max(0.02, min(tick, wait))
        with self.caches.lock:
            published, names = self.caches.renewals, set(self.caches.attestations)
            rv = self.caches.configmap_rvs.get(RENEWALS, "")
        merged = batch.merged(published, names)
        try:
            with self._api("renewals"):
                self._store_configmap(RENEWALS, self.io.publish(RENEWALS, merged, rv))
        except ApiError as err:
            batch.failed(time.monotonic())
            if err.conflict:  # another writer (a former leader): re-read, retry
                self._refresh(RENEWALS)
            else:  # too large, say: each node's status renewal takes over at 3/4 of a lifetime
                log.warning("could not publish the expiry renewals: %s", err)
            return tick
        except NotLeading:
            return tick
        batch.written(merged, time.monotonic())
        self.metrics.renewal_writes.inc()
        return tick

    def _settings(self) -> monitor.Settings:
        return monitor.Settings(
            bundle=self.bundle.bundle, ready_max_age_seconds=self.config.ready_max_age_seconds
        )

    def _challenges_for(self, att: NodeAttestation) -> ChallengeList:
        """The published nonces; read anew when the quote answers one not cached yet."""
        with self.caches.lock:
            cached = self.caches.challenges
        quote = att.spec.tpm.quote if att.spec.tpm is not None else None
        if quote is None or cached.find(quote.nonce) is not None:
            return cached
        with self._api("get_challenges"):
            self._refresh(CHALLENGES)
        with self.caches.lock:
            return self.caches.challenges

    def _work(self) -> None:
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            if not self.synced() or not self.leading.is_set():
                self.stop_event.wait(0.05)
                continue
            key = self.queue.get(timeout=1.0)
            if key is not None:
                self.process(key)

    def process(self, key: str) -> None:
        """Reconcile one key handed out by the queue: on success its back-off is forgotten and
        it comes back at its next deadline; on failure it comes back after its back-off."""
        try:
            delay = self.reconcile(key)
        except NotLeading:
            self.queue.done(key)  # the next leader judges it (this replica too, once it leads)
            return
        except Exception:
            log.exception("reconcile of %s failed; retrying after a back-off", key)
            self.metrics.api_errors.labels("reconcile").inc()
            self.queue.done(key)
            self.queue.add_rate_limited(key)
            return
        self.queue.forget(key)
        self.queue.done(key)
        if delay is not None:
            self.queue.add_after(key, delay)
        if self.renewal_batch.due and self.queue.idle():
            self._wake.set()  # perhaps the round's last answer: write its renewals now

    def policies(self) -> dict[str, AttestationPolicy | None]:
        """Every profile's attestation policy, parsed once per profile resourceVersion."""
        out: dict[str, AttestationPolicy | None] = {}
        with self.caches.lock:
            profiles = list(self.caches.profiles.items())
            cache = self.caches.policies
            for gone in set(cache) - {n for n, _ in profiles}:
                del cache[gone]
            for name, obj in profiles:
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                hit = cache.get(name)
                if hit is None or hit[0] != rv:
                    hit = (rv, self._parse_policy(name, obj))
                    cache[name] = hit
                out[name] = hit[1]
        return out

    @staticmethod
    def _parse_policy(name: str, obj: Obj) -> AttestationPolicy | None:
        raw = (obj.get("spec") or {}).get("attestation")
        if raw is None:
            return None
        try:
            return AttestationPolicy.model_validate(raw)
        except ValidationError as err:
            log.warning("profile %s: spec.attestation invalid, never verified: %s", name, err)
            return None

    @staticmethod
    def _ek_fingerprint(att: NodeAttestation) -> str | None:
        if att.spec.tpm is None:
            return None
        try:
            return hashlib.sha256(base64.b64decode(att.spec.tpm.ek_certificate)).hexdigest()
        except (binascii.Error, ValueError):
            return None

    def _ek_enrolled_by(self, name: str, fingerprint: str | None) -> str | None:
        if fingerprint is None:
            return None
        with self.caches.lock:
            owner = self.caches.enrolled_eks.get(fingerprint)
        return owner if owner is not None and owner != name else None

    @contextmanager
    def _ek_serialised(self, fingerprint: str | None) -> Iterator[None]:
        if fingerprint is None:
            yield
            return
        with self._ek_locks[int(fingerprint[:8], 16) % len(self._ek_locks)]:
            yield

    def reconcile(self, name: str) -> float | None:
        """One node: returns when to look again (seconds), or None."""
        with self.caches.lock:
            obj = self.caches.attestations.get(name)
            node = self.caches.nodes.get(name)
        if obj is None:
            with self.caches.lock:
                self._judged.pop(name, None)
                self._counted.pop(name, None)
            self.renewal_batch.forget(name)
            if node is not None:
                self._apply_labels(name, node, labels.label_patch(node.labels, {}))
            return None
        try:
            att = NodeAttestation.from_object(obj)
        except ValidationError as err:
            log.warning("NodeAttestation %s does not parse, treated as no evidence: %s", name, err)
            att = NodeAttestation.from_object({**obj, "spec": {}})
        fingerprint = self._ek_fingerprint(att)
        published = self._challenges_for(att)
        with self.caches.lock:
            renewal = self.caches.renewals.renewals.get(name)
        with self._ek_serialised(fingerprint):
            now = self.clock()
            started = time.perf_counter()
            out = monitor.step(
                monitor.StepInput(
                    attestation=att,
                    node=monitor.NodeView(node.labels) if node is not None else None,
                    policies=self.policies(),
                    now=now,
                    ek_enrolled_by=self._ek_enrolled_by(name, fingerprint),
                    enrollments=self.caches.enrollments,
                    challenges=published,
                    renewal=renewal,
                ),
                self._settings(),
                self.entropy,
            )
            self.metrics.step_seconds.observe(time.perf_counter() - started)
            if out.status_changed:
                written = self._write_status(name, att, out.status)
                if written is None:
                    return 0.0  # a conflict: redo the step on what is there now
                obj = written
        judged = out.judged.model_dump(mode="json", by_alias=True, include={"verdicts"})
        with self.caches.lock:
            self._judged[name] = judged
        if out.renewal is not None:
            self.renewal_batch.offer(name, out.renewal, out.renewal_due, time.monotonic())
        if out.new_evidence and self._count_once(name, att.generation):
            self.metrics.evidence.labels(str(out.evidence_reason)).inc()
            if out.answered is not None:
                self.metrics.evidence_age.observe((now - out.answered.issued_time).total_seconds())
        if node is not None:
            self._apply_labels(name, node, out.label_patch)
        for t in out.transitions:
            self.metrics.transitions.labels(t.profile, str(t.verified).lower(), str(t.reason)).inc()
        self._emit(obj, name, node, out.events, now)
        if self.notifier is not None and out.transitions:  # the trust webhook; never blocks
            self.notifier.notify(notify.notices(name, out.transitions, out.status, now))
        if out.requeue_after is None:
            return None
        # A little after the deadline, so the step sees it passed.
        return out.requeue_after.total_seconds() + 0.05

    def _count_once(self, name: str, generation: int) -> bool:
        with self.caches.lock:
            if self._counted.get(name) == generation:
                return False
            self._counted[name] = generation
            return True

    def _write_status(
        self, name: str, att: NodeAttestation, status: NodeAttestationStatus
    ) -> Obj | None:
        """PUT the status on the version the step read; None (fresh object cached) on conflict."""
        body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            with self._api("status"):
                written = self.io.replace_status(name, att.resource_version, body)
        except ApiError as err:
            if not err.conflict:
                raise
            self.metrics.conflicts.inc()
            fresh = self.io.get_attestation(name)
            with self.caches.lock:
                self.caches.put_attestation(name, fresh)
            return None
        with self.caches.lock:
            if resource_version(written) >= resource_version(
                self.caches.attestations.get(name, {})
            ):
                self.caches.put_attestation(name, written)
        return written

    def _apply_labels(self, name: str, node: NodeInfo, patch: dict[str, str | None]) -> None:
        if not patch:
            return
        with self._api("patch_node"):
            self.io.patch_node_labels(name, patch)
        for value in patch.values():
            self.metrics.label_changes.labels("remove" if value is None else "add").inc()
        with self.caches.lock:
            current = self.caches.nodes.get(name)
            if current is not None:
                for key, value in patch.items():
                    if value is None:
                        current.labels.pop(key, None)
                    else:
                        current.labels[key] = value
        log.info("node %s labels: %s", name, patch)

    def _emit(
        self,
        obj: Obj,
        name: str,
        node: NodeInfo | None,
        events: tuple[monitor.Event, ...],
        now: datetime,
    ) -> None:
        involved = {
            "apiVersion": API_VERSION,
            "kind": "NodeAttestation",
            "metadata": {"name": name, "uid": (obj.get("metadata") or {}).get("uid", "")},
        }
        for event in events:
            log.info("%s %s: %s", name, event.reason, event.message)
            try:
                self.io.create_event(involved, event.type, event.reason, event.message, now)
                if node is not None and event.reason in (
                    monitor.EventReason.PROFILE_REVOKED,
                    monitor.EventReason.PROFILE_VERIFIED,
                ):
                    self.io.create_event(
                        {"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": name, "uid": node.uid}},
                        event.type, event.reason, event.message, now,
                    )  # fmt: skip
            except Exception as err:  # an Event is best effort; the status holds the truth
                self.metrics.api_errors.labels("event").inc()
                log.warning("could not record Event %s for %s: %s", event.reason, name, err)

    @contextmanager
    def _api(self, operation: str) -> Iterator[None]:
        if not self.leading.is_set():
            raise NotLeading(operation)
        try:
            yield
        except ApiError as err:
            if not err.conflict:
                self.metrics.api_errors.labels(operation).inc()
            raise
        except Exception:
            self.metrics.api_errors.labels(operation).inc()
            raise

    def _verified_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.caches.lock:
            nodes = list(self.caches.nodes.values())
            profiles = list(self.caches.profiles)
        for p in profiles:
            counts[p] = 0
        for info in nodes:
            for p in labels.verified_from_labels(info.labels):
                counts[p] = counts.get(p, 0) + 1
        return counts

    def _evidence_ages(self) -> dict[str, EvidenceAge]:
        """Scrape-time evidence age per profile (see `metrics.evidence_ages`)."""
        bounds = {p: pol.freshness_seconds for p, pol in self.policies().items() if pol}
        with self.caches.lock:
            statuses = list(self._judged.values())
        return evidence_ages(statuses, bounds, self.clock())
