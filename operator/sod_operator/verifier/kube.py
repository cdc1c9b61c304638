"""The verifier's I/O with the Kubernetes API (through `sod_operator.kube`): watch-fed caches
and the few writes.

Reads go through four informers (NodeAttestations, ServerSecurityProfiles,
PlatformEnrollments, Nodes: list, then watch from the list's resourceVersion, relist on 410 Gone
or any error). Writes:

* `replace_status` — PUT `/status` with the object's resourceVersion as precondition (the
  whole status is replaced, so fields the step cleared disappear; a 409 — `ApiError.conflict`
  — means someone wrote in between and the step is redone on fresh data);
* `patch_node_labels` — a JSON merge patch of only our label keys (null deletes);
* `create_event` — core/v1 Events (cluster-scoped involved objects → namespace `default`).
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime
from typing import Any

from sod_operator.api.constants import API_VERSION
from sod_operator.kube import EventRecorder, Informer, Involved, KubeClient, resource_path
from sod_operator.kube.informer import Handler

ATTESTATIONS = "nodeattestations"
PROFILES = "serversecurityprofiles"
NODES = "nodes"
PLATFORMS = "platformenrollments"
WATCH_TIMEOUT_SECONDS = 300

Obj = dict[str, Any]
PATHS = {
    ATTESTATIONS: resource_path(API_VERSION, ATTESTATIONS),
    PROFILES: resource_path(API_VERSION, PROFILES),
    NODES: resource_path("v1", NODES),
    PLATFORMS: resource_path(API_VERSION, PLATFORMS),
}


class KubeIO:
    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._events = EventRecorder(
            client,
            f"{socket.gethostname()}-{os.getpid()}",
            component="sod-verifier",
            reporting_component="sod.dev/verifier",
        )

    # -- reads

    def informer(self, kind: str, handler: Handler, stop: threading.Event) -> Informer:
        """An informer (not started) of `kind` (ATTESTATIONS, PROFILES, PLATFORMS or NODES).

        A kind whose resource does not exist (e.g. the PlatformEnrollment CRD not installed yet)
        is "none of them": the verifier judges on that and fails closed, instead of never
        syncing and leaving every label as it was."""
        return Informer(
            self.client, PATHS[kind], handler=handler, stop=stop,
            watch_timeout=WATCH_TIMEOUT_SECONDS, missing_is_empty=True,
        )  # fmt: skip

    def get_attestation(self, name: str) -> Obj | None:
        return self.client.get_or_none(resource_path(API_VERSION, ATTESTATIONS, name=name))

    # -- writes

    def replace_status(self, name: str, resource_version: str, status: Obj) -> Obj:
        body = {
            "apiVersion": API_VERSION,
            "kind": "NodeAttestation",
            "metadata": {"name": name, "resourceVersion": resource_version},
            "status": status,
        }
        path = resource_path(API_VERSION, ATTESTATIONS, name=name, subresource="status")
        return self.client.replace(path, body)

    def patch_node_labels(self, node: str, labels: dict[str, str | None]) -> None:
        self.client.merge_patch(
            resource_path("v1", NODES, name=node), {"metadata": {"labels": labels}}
        )

    def create_event(
        self, involved: Obj, event_type: str, reason: str, message: str, now: datetime
    ) -> None:
        meta = involved.get("metadata") or {}
        about = Involved(
            api_version=involved.get("apiVersion", "v1"),
            kind=involved.get("kind", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
        )
        self._events.record(about, event_type, reason, message, now)
