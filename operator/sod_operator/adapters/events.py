"""Kubernetes Events for the operator's decisions, posted off the hot path.

Posting is fire-and-forget with bounded concurrency: an Event never delays a migration, and a
burst (a node with 50 VMs revoked) cannot open 50 extra connections at once. Events are only
emitted on decisions and condition transitions, so their number is bounded by what happens.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sod_operator.adapters.kube import Kube
from sod_operator.api.constants import API_VERSION

log = logging.getLogger("sod.events")
COMPONENT = "sod-operator"


class EventRecorder:
    def __init__(self, kube: Kube, instance: str, concurrency: int = 4, backlog: int = 2000):
        self._kube = kube
        self._backlog = backlog
        self.dropped = 0
        self._instance = instance
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

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
        if len(self._tasks) >= self._backlog:
            # A burst beyond what the apiserver takes in: drop rather than grow without bound
            # (status and metrics still say everything an Event would).
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._post(namespace, name, uid, etype, reason, message, kind)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, namespace: str, name: str, uid: str, etype: str, reason: str, message: str, kind: str
    ) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": kind,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": etype,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        async with self._slots:
            try:
                await self._kube.create("v1", "events", namespace, body)
            except Exception as err:
                log.warning("could not post Event %s for %s/%s: %s", reason, namespace, name, err)

    async def drain(self, seconds: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)
