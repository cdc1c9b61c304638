"""The agent's only contact with the Kubernetes API: its own node's `NodeAttestation` and the
verifier's published nonces.

Reads and watches the object by name, creates it, and replaces its spec (with the
resourceVersion as a precondition). It holds no rights on Nodes and no `/status` or delete
rights; a ValidatingAdmissionPolicy confines its writes to the object named after the node
bound into its token (`sod_operator.verifier.rbac`). It reads and watches, by name, the
ConfigMap the verifier publishes its nonces in (`ChallengeList`; read-only: a Role in the
verifier's namespace grants get/list/watch on that one name). A missing or unreadable one
means no nonce yet: the agent then quotes nothing, and the verifier's verdicts age out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sod_operator.api.constants import GROUP, VERSION
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_CONFIGMAP,
    CHALLENGES_KEY,
    TRUST_NAMESPACE,
    ChallengeList,
    NodeAttestation,
    NodeAttestationSpec,
)
from sod_operator.kube import ApiError, Informer, KubeClient, resource_path
from sod_operator.kube.informer import SYNCED

log = logging.getLogger(__name__)
PLURAL = "nodeattestations"
KIND = "NodeAttestation"
API_VERSION = f"{GROUP}/{VERSION}"
WATCH_TIMEOUT_SECONDS = 60


def _rv(obj: NodeAttestation) -> int:
    try:
        return int(obj.resource_version or 0)
    except ValueError:
        return 0


@dataclass
class Snapshot:
    """The latest known object (None: it does not exist)."""

    obj: NodeAttestation | None


def parse_challenges(configmap: dict[str, Any] | None) -> ChallengeList:
    """The nonces in the verifier's ConfigMap; none when it is missing or broken (logged: the
    agent cannot quote until the verifier publishes a valid list)."""
    if configmap is None:
        return ChallengeList()
    raw = (configmap.get("data") or {}).get(CHALLENGES_KEY)
    if raw is None:
        log.warning("the challenges ConfigMap has no %s: no nonce to answer", CHALLENGES_KEY)
        return ChallengeList()
    try:
        return ChallengeList.model_validate_json(raw)
    except ValidationError as err:
        log.error("the challenges ConfigMap's %s is invalid: %s", CHALLENGES_KEY, err)
        return ChallengeList()


class Publisher:
    def __init__(
        self,
        client: KubeClient,
        node: str,
        namespace: str = TRUST_NAMESPACE,
        challenges: str = CHALLENGES_CONFIGMAP,
    ) -> None:
        self.client = client
        self.node = node
        self.changed = threading.Event()
        """Set on every change of the object or of the published nonces."""
        self._latest: Snapshot | None = None
        self._challenges: ChallengeList | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._path = resource_path(API_VERSION, PLURAL, name=node)
        self._informer = Informer(
            client,
            resource_path(API_VERSION, PLURAL),
            handler=self._on_event,
            field_selector=f"metadata.name={node}",
            stop=self._stop,
            watch_timeout=WATCH_TIMEOUT_SECONDS,
        )
        self._cm_path = resource_path("v1", "configmaps", namespace, challenges)
        self._cm_informer = Informer(
            client,
            resource_path("v1", "configmaps", namespace),
            handler=self._on_challenges,
            field_selector=f"metadata.name={challenges}",  # authorised by name (resourceNames)
            stop=self._stop,
            watch_timeout=WATCH_TIMEOUT_SECONDS,
            missing_is_empty=True,
        )

    # -- reading

    def get(self) -> NodeAttestation | None:
        raw = self.client.get_or_none(self._path)
        return None if raw is None else NodeAttestation.from_object(raw)

    def latest(self) -> NodeAttestation | None:
        with self._lock:
            snap = self._latest
        if snap is None:
            obj = self.get()
            with self._lock:
                self._latest = Snapshot(obj)
            return obj
        return snap.obj

    def _store(self, obj: NodeAttestation | None) -> None:
        """Keep the newest version. A write's response can arrive after the watch already
        delivered a newer version (the verifier judging the evidence at once, e.g. writing
        its enrollment challenge): storing the older one would hide that status, and the agent
        would wait for a change that already happened (found by the verifier fail-over
        trials)."""
        with self._lock:
            current = self._latest.obj if self._latest is not None else None
            if obj is None or current is None or _rv(obj) >= _rv(current):
                self._latest = Snapshot(obj)
        self.changed.set()

    def challenges(self) -> ChallengeList:
        """The published nonces, newest first (read once directly if the watch has not
        delivered them yet)."""
        with self._lock:
            known = self._challenges
        if known is not None:
            return known
        try:
            fetched = parse_challenges(self.client.get_or_none(self._cm_path))
        except ApiError as err:
            # E.g. forbidden: no nonce for now, but the identity is written. Not asked again
            # every round: the watch (which retries with a back-off) brings the list.
            log.warning("cannot read the challenges ConfigMap: %s", err)
            fetched = ChallengeList()
        with self._lock:
            if self._challenges is None:  # the watch may have delivered meanwhile: it wins
                self._challenges = fetched
            return self._challenges

    def _set_challenges(self, challenges: ChallengeList) -> None:
        with self._lock:
            self._challenges = challenges
        self.changed.set()

    def watch_forever(self) -> None:
        """Keep `latest()` and `challenges()` current and set `changed` on every event (run in
        a thread; the informers list again after any failure, and the main loop also polls)."""
        self._cm_informer.start()
        self._informer.run()

    def _on_event(self, etype: str, obj: dict[str, Any]) -> None:
        if etype == "DELETED" or (etype == SYNCED and not obj["items"]):
            self._store(None)
        elif etype in ("ADDED", "MODIFIED"):
            self._store(NodeAttestation.from_object(obj))

    def _on_challenges(self, etype: str, obj: dict[str, Any]) -> None:
        # A (re)list reports what changed as ADDED/MODIFIED/DELETED; an empty one says the
        # ConfigMap does not exist (yet): no nonce, and no need to read it directly.
        if etype == "DELETED" or (etype == SYNCED and not obj["items"]):
            self._set_challenges(ChallengeList())
        elif etype in ("ADDED", "MODIFIED"):
            self._set_challenges(parse_challenges(obj))

    def stop(self) -> None:
        self._stop.set()
        self.client.close_watches()
        self.changed.set()

    # -- writing

    def write(self, spec: NodeAttestationSpec, existing: NodeAttestation | None) -> NodeAttestation:
        """Create the object, or replace its spec; one retry on a write conflict."""
        body_spec = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        for attempt in range(2):
            metadata: dict[str, Any] = {"name": self.node}
            if existing is not None:
                metadata["resourceVersion"] = existing.resource_version
            body = {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": metadata,
                "spec": body_spec,
            }
            try:
                if existing is None:
                    raw = self.client.create(resource_path(API_VERSION, PLURAL), body)
                else:
                    raw = self.client.replace(self._path, body)
            except ApiError as err:
                if attempt == 0 and err.conflict:
                    existing = self.get()  # created or changed meanwhile: build on what is there
                    continue
                if attempt == 0 and err.not_found and existing is not None:
                    existing = None
                    continue
                raise
            obj = NodeAttestation.from_object(raw)
            self._store(obj)
            return obj
        raise RuntimeError("unreachable")  # pragma: no cover
