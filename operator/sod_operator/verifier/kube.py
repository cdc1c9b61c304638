"""The verifier's I/O with the Kubernetes API: caches fed by watches, and the few writes.

Reads go through four watch-fed caches (NodeAttestations, ServerSecurityProfiles,
PlatformEnrollments, Nodes:
list, then watch from the list's resourceVersion, relist on 410 Gone or any error). Writes:

* `replace_status` — PUT `/status` with the object's resourceVersion as precondition (the
  whole status is replaced, so fields the step cleared disappear; a 409 means someone wrote
  in between and the step is redone on fresh data);
* `patch_node_labels` — a JSON merge patch of only our label keys (null deletes);
* `create_event` — core/v1 Events (cluster-scoped involved objects → namespace `default`).

The official client is only partly typed: everything it returns is turned into dicts and
models here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from sod_operator.api.constants import API_VERSION, GROUP, VERSION

log = logging.getLogger("sod.verifier")
_kube: Any = kubernetes

ATTESTATIONS = "nodeattestations"
PROFILES = "serversecurityprofiles"
PLATFORMS = "platformenrollments"
EVENT_NAMESPACE = "default"
WATCH_TIMEOUT_SECONDS = 300

Obj = dict[str, Any]
Handler = Callable[[str, Obj], None]
"""(event type, object) — ADDED/MODIFIED/DELETED, plus SYNCED after each (re)list."""


def api_client(kubeconfig: str | None) -> Any:
    if kubeconfig:
        return _kube.config.new_client_from_config(config_file=kubeconfig)
    _kube.config.load_incluster_config()
    return _kube.client.ApiClient()


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


@dataclass
class Resource:
    """How to list and watch one kind as plain dicts."""

    name: str
    list_fn: Callable[..., Any]


class KubeIO:
    def __init__(self, api: Any) -> None:
        self._api = api
        self._custom: Any = _kube.client.CustomObjectsApi(api)
        self._core: Any = _kube.client.CoreV1Api(api)
        self._instance = f"{socket.gethostname()}-{os.getpid()}"

    # -- reads

    def resources(self) -> dict[str, Resource]:
        def custom(plural: str) -> Callable[..., Any]:
            def list_fn(**kw: Any) -> Any:
                return self._custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)

            return list_fn

        def nodes(**kw: Any) -> Any:
            return self._core.list_node(**kw)

        return {
            ATTESTATIONS: Resource(ATTESTATIONS, custom(ATTESTATIONS)),
            PROFILES: Resource(PROFILES, custom(PROFILES)),
            PLATFORMS: Resource(PLATFORMS, custom(PLATFORMS)),
            "nodes": Resource("nodes", nodes),
        }

    def to_dict(self, obj: Any) -> Obj:
        if isinstance(obj, dict):
            return obj
        out: Obj = self._api.sanitize_for_serialization(obj)
        return out

    def get_attestation(self, name: str) -> Obj | None:
        try:
            raw: Obj = self._custom.get_cluster_custom_object(GROUP, VERSION, ATTESTATIONS, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return raw

    def watch(self, resource: Resource, handler: Handler, stop: threading.Event) -> None:
        """List, then watch; forever (until `stop`), relisting after errors or 410 Gone."""
        while not stop.is_set():
            try:
                listed = self.to_dict(resource.list_fn())
                for item in listed.get("items") or []:
                    handler("ADDED", self.to_dict(item))
                handler("SYNCED", {"items": [self.to_dict(i) for i in listed.get("items") or []]})
                rv = (listed.get("metadata") or {}).get("resourceVersion")
                while not stop.is_set():
                    w = _kube.watch.Watch()
                    for event in w.stream(
                        resource.list_fn,
                        resource_version=rv,
                        timeout_seconds=WATCH_TIMEOUT_SECONDS,
                        allow_watch_bookmarks=True,
                    ):
                        if stop.is_set():
                            w.stop()
                            return
                        kind = event["type"]
                        obj = self.to_dict(event["object"])
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if kind == "ERROR":
                            raise ApiException(
                                status=obj.get("code", 500), reason=obj.get("reason")
                            )
                        if kind != "BOOKMARK":
                            handler(kind, obj)
            except Exception as err:
                if isinstance(err, ApiException) and err.status == 404:
                    # The resource does not exist (e.g. the PlatformEnrollment CRD is not
                    # installed yet): there is none of it, so judge on that (fail closed)
                    # instead of never syncing and leaving every label as it was.
                    handler("SYNCED", {"items": []})
                if not stop.is_set():
                    log.warning("watch of %s restarts after: %s", resource.name, err)
                    stop.wait(1.0)

    # -- writes

    def replace_status(self, name: str, resource_version: str, status: Obj) -> Obj:
        body = {
            "apiVersion": API_VERSION,
            "kind": "NodeAttestation",
            "metadata": {"name": name, "resourceVersion": resource_version},
            "status": status,
        }
        try:
            out: Obj = self._custom.replace_cluster_custom_object_status(
                GROUP, VERSION, ATTESTATIONS, name, body
            )
        except ApiException as err:
            if err.status == 409:
                raise Conflict(name) from err
            raise
        return out

    def patch_node_labels(self, node: str, labels: dict[str, str | None]) -> None:
        self._core.patch_node(node, {"metadata": {"labels": labels}})

    def create_event(
        self, involved: Obj, event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        meta = involved.get("metadata") or {}
        stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'sod')}.",
                "namespace": EVENT_NAMESPACE,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", "v1"),
                "kind": involved.get("kind", ""),
                "name": meta.get("name", ""),
                "uid": meta.get("uid", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "sod-verifier"},
            "reportingComponent": "sod.dev/verifier",
            "reportingInstance": self._instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._core.create_namespaced_event(EVENT_NAMESPACE, body)
