"""Start-up of the operator process: options, kopf settings, and the controller's parts.

Everything here runs once (from `sod-operator`'s `main` and kopf's startup and login
handlers); nothing is read at import time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from sod_operator.adapters.controller import Controller
from sod_operator.adapters.metrics import Metrics
from sod_operator.adapters.renewals import RenewalsWatch
from sod_operator.api.constants import FINALIZER, KOPF_PROGRESS_PREFIX
from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_CONFIGMAP, TRUST_NAMESPACE
from sod_operator.kube import AsyncKube, EventRecorder, KubeClient
from sod_operator.policy.settings import RelocationSettings

log = logging.getLogger("sod.runtime")


@dataclass
class Options:
    """What `sod-operator` was started with (see `sod_operator.main` for the flags)."""

    kubeconfig: Path | None = None
    context: str | None = None
    identity: str = "sod-operator"
    relocation: RelocationSettings = field(default_factory=RelocationSettings)
    metrics_port: int = 0
    bind_address: str = "127.0.0.1"
    chunk: int = 500
    lost: threading.Event = field(default_factory=threading.Event)
    """Set when leadership is lost: the controller stops writing at once."""
    kube: AsyncKube | None = None
    renewals_namespace: str = TRUST_NAMESPACE
    renewals_configmap: str = RENEWALS_CONFIGMAP
    """The verifier's fleet renewals of verdict expiries (in the verifier's namespace)."""


def kube_for(options: Options) -> AsyncKube:
    if options.kube is None:
        client = KubeClient(options.kubeconfig, context=options.context, user_agent="sod-operator")
        options.kube = AsyncKube(client)
    return options.kube


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings, with the reason for each."""
    # Leader election is ours (adapters.leader): kopf's peering lets equal-priority peers run.
    settings.peering.standalone = True
    # We post Events for decisions ourselves; kopf would post one per handler log line.
    settings.posting.enabled = False
    # Our bookkeeping prefixes (kopf writes nothing for index/event handlers, but be explicit).
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_PROGRESS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PROGRESS_PREFIX, key="last-handled-configuration"
    )
    # Let the apiserver end each watch after 5 min and the client notice a dead connection
    # soon after: a silently stalled node watch would hide revocations.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Reconnect a broken watch at once (the default 0.1 s backoff) — reaction time matters.
    settings.watching.reconnect_backoff = 0.1
    # A per-object worker lingers 5 s for more events (kopf's default); with 20,000 objects
    # that keeps memory bounded while bursts of one object reuse its worker.
    settings.queueing.idle_timeout = 5.0


def build_controller(options: Options) -> Controller:
    kube = kube_for(options)
    metrics = Metrics()
    if options.metrics_port:
        metrics.serve(options.metrics_port, options.bind_address)
        log.info("metrics on http://%s:%d/metrics", options.bind_address, options.metrics_port)
    controller = Controller(
        kube,
        options.relocation,
        metrics,
        EventRecorder(kube.client, options.identity),
        chunk=options.chunk,
        stopped=options.lost,
        await_renewals=True,
    )
    return controller


def watch_renewals(options: Options, controller: Controller) -> RenewalsWatch:
    """The renewals ConfigMap's watch, feeding `controller` on the running loop (started)."""
    return RenewalsWatch.into_loop(
        kube_for(options).client,
        options.renewals_namespace,
        options.renewals_configmap,
        asyncio.get_running_loop(),
        controller.observe_renewals,
    ).start()


def connection_info(options: Options) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig the operator's own client uses (fresh: kopf
    logs in again on a 401, e.g. after the projected service-account token rotated)."""
    creds = kube_for(options).client.credentials()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        insecure=creds.insecure,
        scheme=creds.scheme,
        token=creds.token,
        certificate_path=creds.cert_path,
        private_key_path=creds.key_path,
    )
