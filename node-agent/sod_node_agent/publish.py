"""The agent's only contact with the Kubernetes API: its own node's `NodeAttestation`.

Reads and watches the object by name, creates it, and replaces its spec (with the
resourceVersion as a precondition). It holds no rights on Nodes and no `/status` or delete
rights; a ValidatingAdmissionPolicy confines its writes to the object named after the node
bound into its token (`sod_operator.verifier.rbac`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sod_operator.api.constants import GROUP, VERSION
from sod_operator.api.v1alpha1.nodeattestation import NodeAttestation, NodeAttestationSpec
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


class Publisher:
    def __init__(self, client: KubeClient, node: str) -> None:
        self.client = client
        self.node = node
        self.changed = threading.Event()
        self._latest: Snapshot | None = None
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
        delivered a newer version (the verifier consuming the evidence at once and issuing
        the next nonce): storing the older one would hide that nonce, and the agent would wait
        for a status change that already happened (found by the verifier fail-over trials)."""
        with self._lock:
            current = self._latest.obj if self._latest is not None else None
            if obj is None or current is None or _rv(obj) >= _rv(current):
                self._latest = Snapshot(obj)
        self.changed.set()

    def watch_forever(self) -> None:
        """Keep `latest()` current and set `changed` on every event (run in a thread; the
        informer lists again after any failure, and the main loop also polls)."""
        self._informer.run()

    def _on_event(self, etype: str, obj: dict[str, Any]) -> None:
        if etype == "DELETED" or (etype == SYNCED and not obj["items"]):
            self._store(None)
        elif etype in ("ADDED", "MODIFIED"):
            self._store(NodeAttestation.from_object(obj))

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
