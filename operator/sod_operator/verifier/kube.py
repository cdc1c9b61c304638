"""The verifier's I/O with the Kubernetes API (through `sod_operator.kube`): watch-fed caches
and the few writes.

Reads go through five informers (NodeAttestations, ServerSecurityProfiles,
PlatformEnrollments, Nodes and the one challenges ConfigMap: list, then watch from the list's
resourceVersion, relist on 410 Gone or any error). Writes:

* `replace_status` — PUT `/status` with the object's resourceVersion as precondition (the
  whole status is replaced, so fields the step cleared disappear; a 409 — `ApiError.conflict`
  — means someone wrote in between and the step is redone on fresh data);
* `publish_challenges` — create, or PUT with its resourceVersion, the challenges ConfigMap
  (the fleet's nonces; a 409 means another replica published: the informer brings its list);
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
from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_KEY, ChallengeList
from sod_operator.kube import EventRecorder, Informer, Involved, KubeClient, resource_path
from sod_operator.kube.informer import Handler

ATTESTATIONS = "nodeattestations"
PROFILES = "serversecurityprofiles"
NODES = "nodes"
PLATFORMS = "platformenrollments"
CHALLENGES = "challenges"
WATCH_TIMEOUT_SECONDS = 300

Obj = dict[str, Any]
PATHS = {
    ATTESTATIONS: resource_path(API_VERSION, ATTESTATIONS),
    PROFILES: resource_path(API_VERSION, PROFILES),
    NODES: resource_path("v1", NODES),
    PLATFORMS: resource_path(API_VERSION, PLATFORMS),
}


class KubeIO:
    def __init__(self, client: KubeClient, namespace: str = "", challenges_name: str = "") -> None:
        self.client = client
        self.namespace = namespace
        self.challenges_name = challenges_name
        """The ConfigMap the nonces are published in (in `namespace`)."""
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
        if kind == CHALLENGES:
            return Informer(
                self.client, resource_path("v1", "configmaps", self.namespace), handler=handler,
                field_selector=f"metadata.name={self.challenges_name}", stop=stop,
                watch_timeout=WATCH_TIMEOUT_SECONDS,
            )  # fmt: skip
        return Informer(
            self.client, PATHS[kind], handler=handler, stop=stop,
            watch_timeout=WATCH_TIMEOUT_SECONDS, missing_is_empty=True,
        )  # fmt: skip

    def get_attestation(self, name: str) -> Obj | None:
        return self.client.get_or_none(resource_path(API_VERSION, ATTESTATIONS, name=name))

    def get_challenges(self) -> Obj | None:
        return self.client.get_or_none(
            resource_path("v1", "configmaps", self.namespace, name=self.challenges_name)
        )

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

    def publish_challenges(self, challenges: ChallengeList, resource_version: str) -> Obj:
        """Create the ConfigMap (no `resource_version`: none seen yet) or replace it."""
        body: Obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.challenges_name, "namespace": self.namespace},
            "data": {CHALLENGES_KEY: challenges.model_dump_json(by_alias=True)},
        }
        collection = resource_path("v1", "configmaps", self.namespace)
        if not resource_version:
            return self.client.create(collection, body)
        body["metadata"]["resourceVersion"] = resource_version
        return self.client.replace(
            resource_path("v1", "configmaps", self.namespace, name=self.challenges_name), body
        )

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
