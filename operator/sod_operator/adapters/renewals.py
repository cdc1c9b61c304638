"""The verifier's fleet renewals ConfigMap, watched by name and handed to the controller.

kopf cannot watch one ConfigMap: it watches every ConfigMap in the cluster and filters
client-side, which the operator must not be allowed to read. So the renewals are watched by the
I/O package's thread-based `Informer` with a `metadata.name` field selector (RBAC authorises
that list and watch by `resourceNames`: the operator's Role names this ConfigMap only), and
each change is handed to the controller on its asyncio loop (the controller is single-threaded).

Level-triggered: whatever the event, the controller gets the ConfigMap as cached now. A missing
ConfigMap is no renewal (status expiries alone count: fail closed); one that does not parse is
logged as an error and counts as none, too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sod_operator.api.v1alpha1.nodeattestation import RenewalList
from sod_operator.api.v1alpha1.parsing import ManifestError
from sod_operator.kube import Informer, KubeClient, resource_path
from sod_operator.kube.client import JsonObj
from sod_operator.policy.observed import renewals_from_configmap

log = logging.getLogger("sod.renewals")


class RenewalsWatch:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        deliver: Callable[[RenewalList], None],
    ):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.deliver = deliver
        """Called from the informer's thread with the renewals now listed."""
        self.informer = Informer(
            client,
            resource_path("v1", "configmaps", namespace),
            handler=self._changed,
            field_selector=f"metadata.name={name}",
        )

    @classmethod
    def into_loop(
        cls,
        client: KubeClient,
        namespace: str,
        name: str,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[RenewalList], None],
    ) -> RenewalsWatch:
        """A watch whose deliveries run `observe` on `loop` (in order)."""

        def deliver(renewals: RenewalList) -> None:
            loop.call_soon_threadsafe(observe, renewals)

        return cls(client, namespace, name, deliver)

    def start(self) -> RenewalsWatch:
        log.info("planning waits for the renewals ConfigMap %s/%s", self.namespace, self.name)
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()
        # The watch would otherwise block its thread until the server ends it (minutes).
        self.client.close_watches()

    def current(self) -> RenewalList:
        body = self.informer.get(self.namespace, self.name)
        try:
            return renewals_from_configmap(body)
        except ManifestError as err:
            log.error(
                "ConfigMap %s/%s: %s; counting no renewal (verdicts expire as written)",
                self.namespace,
                self.name,
                err,
            )
            return RenewalList()

    def _changed(self, etype: str, obj: JsonObj) -> None:
        del etype, obj  # level-triggered: the cache already holds the change (or the deletion)
        self.deliver(self.current())
