"""Kubernetes Events (core/v1) for decisions and transitions: one body, one recorder.

`record` posts one Event and waits (the verifier's worker threads). `post` is the operator's
fire-and-forget form with bounded concurrency: an Event never delays a migration, and a burst
(a node with 50 VMs revoked) cannot open 50 extra connections at once; beyond `backlog`
pending Events new ones are dropped and counted (status and metrics still say everything an
Event would). Events are only emitted on decisions and condition transitions, so their number
is bounded by what happens; each is its own object (`count` 1, as before).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sod_operator.api.constants import API_VERSION
from sod_operator.api.rest import resource_path
from sod_operator.kube.client import JsonObj, KubeClient

log = logging.getLogger("sod.events")

OPERATOR = "sod-operator"
CLUSTER_SCOPED_NAMESPACE = "default"
"""Where Events about cluster-scoped objects (Nodes, NodeAttestations) go, as kubectl's do."""
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Involved:
    """The object an Event is about (`namespace` None: cluster-scoped)."""

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str | None = None


@dataclass(frozen=True)
class Source:
    """Who reports: `source.component`, `reportingComponent`, `reportingInstance`."""

    component: str
    reporting_component: str
    instance: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    involved: Involved, etype: str, reason: str, message: str, now: datetime, source: Source
) -> JsonObj:
    obj: JsonObj = {
        "apiVersion": involved.api_version,
        "kind": involved.kind,
        "name": involved.name,
        "uid": involved.uid,
    }
    if involved.namespace:
        obj["namespace"] = involved.namespace
    stamp = timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{involved.name or 'sod'}.",
            "namespace": involved.namespace or CLUSTER_SCOPED_NAMESPACE,
        },
        "involvedObject": obj,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": etype,
        "source": {"component": source.component},
        "reportingComponent": source.reporting_component,
        "reportingInstance": source.instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        instance: str,
        *,
        component: str = OPERATOR,
        reporting_component: str | None = None,
        concurrency: int = 4,
        backlog: int = 2000,
    ) -> None:
        self._client = client
        self.source = Source(component, reporting_component or component, instance)
        self._backlog = backlog
        self.dropped = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def record(
        self, involved: Involved, etype: str, reason: str, message: str, now: datetime
    ) -> None:
        """Post one Event and wait for the apiserver (raises `ApiError`)."""
        body = event_body(involved, etype, reason, message, now, self.source)
        namespace = body["metadata"]["namespace"]
        self._client.create(resource_path("v1", "events", namespace), body)

    def post(
        self,
        namespace: str,
        name: str,
        uid: str,
        etype: str,
        reason: str,
        message: str,
        kind: str = "SecureVM",
    ) -> None:
        """Fire and forget, from the event loop: an Event about one of our namespaced kinds."""
        if len(self._tasks) >= self._backlog:
            self.dropped += 1
            return
        involved = Involved(API_VERSION, kind, name, uid, namespace)
        task = asyncio.get_running_loop().create_task(
            self._post(involved, etype, reason, message, datetime.now(UTC))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, involved: Involved, etype: str, reason: str, message: str, now: datetime
    ) -> None:
        async with self._slots:
            try:
                await asyncio.to_thread(self.record, involved, etype, reason, message, now)
            except Exception as err:
                log.warning(
                    "could not post Event %s for %s/%s: %s",
                    reason, involved.namespace, involved.name, err,
                )  # fmt: skip

    async def drain(self, seconds: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)
