"""Start-up of the operator process: options, kopf settings, and the controller's parts.

Everything here runs once (from `sod-operator`'s `main` and kopf's startup and login
handlers); nothing is read at import time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from sod_operator.adapters.controller import Controller
from sod_operator.adapters.events import EventRecorder
from sod_operator.adapters.kube import Kube, load_api_client
from sod_operator.adapters.metrics import Metrics
from sod_operator.api.constants import FINALIZER, KOPF_PROGRESS_PREFIX
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
    react_to_nodes: bool = True
    lost: threading.Event = field(default_factory=threading.Event)
    """Set when leadership is lost: the controller stops writing at once."""
    kube: Kube | None = None


def kube_for(options: Options) -> Kube:
    if options.kube is None:
        options.kube = Kube(load_api_client(options.kubeconfig, options.context))
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
        EventRecorder(kube, options.identity),
        chunk=options.chunk,
        stopped=options.lost,
        react_to_nodes=options.react_to_nodes,
    )
    return controller


def connection_info(options: Options) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig the operator's own client uses."""
    conf = kube_for(options)._conf
    header = conf.get_api_key_with_prefix("BearerToken") or conf.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=conf.host,
        ca_path=conf.ssl_ca_cert,
        insecure=not conf.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=conf.cert_file,
        private_key_path=conf.key_file,
    )
