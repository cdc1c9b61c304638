"""The verifier's I/O with the Kubernetes API (through `sod_operator.kube`): watch-fed caches
and the few writes.

Reads go through six informers (NodeAttestations, ServerSecurityProfiles,
PlatformEnrollments, Nodes, and the challenges and renewals ConfigMaps, each by name: list,
then watch from the list's resourceVersion, relist on 410 Gone or any error). Writes:

* `replace_status` — PUT `/status` with the object's resourceVersion as precondition (the
  whole status is replaced, so fields the step cleared disappear; a 409 — `ApiError.conflict`
  — means someone wrote in between and the step is redone on fresh data);
* `publish` — create, or PUT with its resourceVersion, the challenges ConfigMap (the fleet's
  nonces) or the renewals ConfigMap (the fleet's expiry renewals); a 409 means another
  replica published: the caller re-reads;
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
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_KEY,
    RENEWALS_KEY,
    ChallengeList,
    RenewalList,
)
from sod_operator.kube import EventRecorder, Informer, Involved, KubeClient, resource_path
from sod_operator.kube.informer import Handler

ATTESTATIONS = "nodeattestations"
PROFILES = "serversecurityprofiles"
NODES = "nodes"
PLATFORMS = "platformenrollments"
CHALLENGES = "challenges"
RENEWALS = "renewals"
CONFIGMAP_KEYS = {CHALLENGES: CHALLENGES_KEY, RENEWALS: RENEWALS_KEY}
"""The fleet-wide ConfigMaps the verifier publishes, and the data key of each."""
WATCH_TIMEOUT_SECONDS = 300

Obj = dict[str, Any]
PATHS = {
    ATTESTATIONS: resource_path(API_VERSION, ATTESTATIONS),
    PROFILES: resource_path(API_VERSION, PROFILES),
    NODES: resource_path("v1", NODES),
    PLATFORMS: resource_path(API_VERSION, PLATFORMS),
}


class KubeIO:
    def __init__(
        self,
        client: KubeClient,
        namespace: str = "",
        challenges_name: str = "",
        renewals_name: str = "",
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.configmaps = {CHALLENGES: challenges_name, RENEWALS: renewals_name}
        """The ConfigMaps (in `namespace`) the nonces and the expiry renewals are published in."""
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
        if kind in self.configmaps:
            return Informer(
                self.client, resource_path("v1", "configmaps", self.namespace), handler=handler,
                field_selector=f"metadata.name={self.configmaps[kind]}", stop=stop,
                watch_timeout=WATCH_TIMEOUT_SECONDS,
            )  # fmt: skip
        return Informer(
            self.client, PATHS[kind], handler=handler, stop=stop,
            watch_timeout=WATCH_TIMEOUT_SECONDS, missing_is_empty=True,
        )  # fmt: skip

    def get_attestation(self, name: str) -> Obj | None:
        return self.client.get_or_none(resource_path(API_VERSION, ATTESTATIONS, name=name))

    def get_configmap(self, kind: str) -> Obj | None:
        """The challenges or renewals ConfigMap (None: not there)."""
        return self.client.get_or_none(
            resource_path("v1", "configmaps", self.namespace, name=self.configmaps[kind])
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

    def publish(
        self, kind: str, content: ChallengeList | RenewalList, resource_version: str
    ) -> Obj:
        """Create the challenges or renewals ConfigMap (no `resource_version`: none seen yet),
        or replace it on the version seen."""
        name = self.configmaps[kind]
        body: Obj = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace},
            "data": {CONFIGMAP_KEYS[kind]: content.model_dump_json(by_alias=True)},
        }
        collection = resource_path("v1", "configmaps", self.namespace)
        if not resource_version:
            return self.client.create(collection, body)
        body["metadata"]["resourceVersion"] = resource_version
        return self.client.replace(
            resource_path("v1", "configmaps", self.namespace, name=name), body
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
