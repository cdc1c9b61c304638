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

import kubernetes
from kubernetes.client.exceptions import ApiException
from sod_operator.api.constants import GROUP, VERSION
from sod_operator.api.v1alpha1.nodeattestation import NodeAttestation, NodeAttestationSpec

log = logging.getLogger(__name__)
# The official client is only partly typed; everything it returns is parsed into models here.
_kube: Any = kubernetes
PLURAL = "nodeattestations"
KIND = "NodeAttestation"


def api_client(kubeconfig: str | None) -> Any:
    """An `ApiClient` from a kubeconfig file, else from the in-cluster service account."""
    if kubeconfig:
        return _kube.config.new_client_from_config(config_file=kubeconfig)
    _kube.config.load_incluster_config()
    return _kube.client.ApiClient()


@dataclass
class Snapshot:
    """The latest known object (None: it does not exist)."""

    obj: NodeAttestation | None


class Publisher:
    def __init__(self, api: Any, node: str) -> None:
        self._api: Any = _kube.client.CustomObjectsApi(api)
        self.node = node
        self.changed = threading.Event()
        self._latest: Snapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- reading

    def get(self) -> NodeAttestation | None:
        try:
            raw: dict[str, Any] = self._api.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, self.node
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return NodeAttestation.from_object(raw)

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
        with self._lock:
            self._latest = Snapshot(obj)
        self.changed.set()

    def watch_forever(self) -> None:
        """Keep `latest()` current and set `changed` on every event (run in a thread)."""
        while not self._stop.is_set():
            try:
                w = _kube.watch.Watch()
                for event in w.stream(
                    self._api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    field_selector=f"metadata.name={self.node}",
                    timeout_seconds=60,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "DELETED":
                        self._store(None)
                    elif isinstance(obj, dict) and event["type"] in ("ADDED", "MODIFIED"):
                        self._store(NodeAttestation.from_object(obj))
            except Exception as err:  # the watch restarts; the main loop also polls
                log.warning("watch of NodeAttestation %s failed: %s", self.node, err)
                self._stop.wait(1.0)
                with self._lock:
                    self._latest = None  # force a fresh GET

    def stop(self) -> None:
        self._stop.set()
        self.changed.set()

    # -- writing

    def write(self, spec: NodeAttestationSpec, existing: NodeAttestation | None) -> NodeAttestation:
        """Create the object, or replace its spec; one retry on a write conflict."""
        body_spec = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        for attempt in range(2):
            if existing is None:
                body: dict[str, Any] = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "metadata": {"name": self.node},
                    "spec": body_spec,
                }
                try:
                    raw = self._api.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
                except ApiException as err:
                    if err.status == 409 and attempt == 0:
                        existing = self.get()
                        continue
                    raise
            else:
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "metadata": {"name": self.node, "resourceVersion": existing.resource_version},
                    "spec": body_spec,
                }
                try:
                    raw = self._api.replace_cluster_custom_object(
                        GROUP, VERSION, PLURAL, self.node, body
                    )
                except ApiException as err:
                    if err.status == 409 and attempt == 0:
                        existing = self.get()
                        continue
                    if err.status == 404 and attempt == 0:
                        existing = None
                        continue
                    raise
            obj = NodeAttestation.from_object(raw)
            self._store(obj)
            return obj
        raise RuntimeError("unreachable")  # pragma: no cover
