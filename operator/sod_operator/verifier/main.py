"""`sod-verifier`: the trust monitor's verifier process.

    sod-verifier run --ek-ca-bundle FILE [--kubeconfig FILE] [--metrics-port 9464]
    sod-verifier manifests [--namespace sod-system]     # RBAC + admission policies (YAML)

`run` serves `/metrics` (Prometheus text, `sod_attestation_*`; `?name[]=FAMILY` restricts it),
`/healthz` (the worker and watches are alive) and `/readyz` (caches synced) on
`--metrics-address:--metrics-port`. The leader publishes a nonce for the fleet every
`--challenge-interval` seconds in the ConfigMap `--challenges`, and the fleet's expiry renewals
(read by the operator) in the ConfigMap `--renewals` (both in namespace `--lease-namespace`).

Replicas elect one leader on a Lease (`--lease-namespace`/`--lease-name`, the same elector as
the operator's); the others keep warm caches and take over when the leader's Lease expires.
A leader that cannot renew its Lease in time (the apiserver unreachable) stops writing at once
and stands by again, waiting for the Lease like any replica. Exit codes: 0 after SIGTERM/SIGINT
(the Lease is released), 2 on a bad CA bundle.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_CONFIGMAP, RENEWALS_CONFIGMAP
from sod_operator.attestation.ekcert import BundleError
from sod_operator.kube import KubeClient
from sod_operator.kube.leader import LeaderElector, add_lease_args, lease_config
from sod_operator.verifier import rbac
from sod_operator.verifier.controller import BundleSource, Verifier, VerifierConfig
from sod_operator.verifier.kube import KubeIO
from sod_operator.verifier.metrics import Metrics
from sod_operator.verifier.notify import Notifier, NotifyMetrics, WebhookConfig
from sod_operator.verifier.renewals import BatchSettings

log = logging.getLogger("sod.verifier")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sod-verifier", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the verifier")
    run.add_argument(
        "--ek-ca-bundle",
        type=Path,
        default=env("SOD_EK_CA_BUNDLE"),
        required=not env("SOD_EK_CA_BUNDLE"),
        help="PEM file of trusted EK root (and intermediate) CA certificates",
    )
    run.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig of the verifier's identity (default: in-cluster)",
    )
    run.add_argument("--metrics-address", default=env("SOD_METRICS_ADDRESS", "127.0.0.1"))
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("SOD_METRICS_PORT", "9464")),
        help="0 disables the HTTP endpoint",
    )
    run.add_argument(
        "--ready-max-age",
        type=int,
        default=120,
        help="seconds valid evidence counts as Ready when no profile has an attestation "
        "policy (otherwise the longest profile freshnessSeconds decides)",
    )
    run.add_argument("--resync", type=float, default=60.0, help="seconds between full resyncs")
    run.add_argument(
        "--workers",
        type=int,
        default=VerifierConfig.workers,
        help="nodes reconciled at once (each waits mostly on its status write)",
    )
    run.add_argument(
        "--notify-url",
        default=env("SOD_NOTIFY_URL", ""),
        help="CloudEvents webhook for every trust loss and restoration (empty: off)",
    )
    run.add_argument(
        "--notify-secret-file",
        type=Path,
        default=env("SOD_NOTIFY_SECRET_FILE"),
        help="file holding the HMAC-SHA256 key the webhook requests are signed with",
    )
    run.add_argument("--notify-ca-bundle", type=Path, default=env("SOD_NOTIFY_CA_BUNDLE"))
    run.add_argument("--notify-timeout", type=float, default=5.0, help="seconds per attempt")
    run.add_argument(
        "--challenge-interval",
        type=float,
        default=float(
            env("SOD_CHALLENGE_INTERVAL_SECONDS", str(VerifierConfig.challenge_interval_seconds))
        ),
        help="seconds between two nonces published for the fleet (the agents' rounds)",
    )
    run.add_argument(
        "--challenges",
        default=env("SOD_CHALLENGES_CONFIGMAP", CHALLENGES_CONFIGMAP),
        help="the ConfigMap (in --lease-namespace) the nonces are published in",
    )
    run.add_argument(
        "--renewals",
        default=env("SOD_RENEWALS_CONFIGMAP", RENEWALS_CONFIGMAP),
        help="the ConfigMap (in --lease-namespace) the fleet's expiry renewals are published in "
        "(the operator reads it: give it the same name)",
    )
    run.add_argument(
        "--renewal-batch",
        type=float,
        default=float(env("SOD_RENEWAL_BATCH_SECONDS", str(BatchSettings.window))),
        help="seconds: at most one renewals write this often; a due renewal waits at most this",
    )
    run.add_argument("--log-level", default=env("SOD_LOG_LEVEL", "INFO"))
    add_lease_args(run, name=rbac.LEASE_NAME, namespace=rbac.DEFAULT_NAMESPACE)
    man = sub.add_parser("manifests", help="print the RBAC and admission policies as YAML")
    man.add_argument("--namespace", default=rbac.DEFAULT_NAMESPACE)
    return p  # fmt: skip


def serve(verifier: Verifier, address: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                names = parse_qs(url.query).get("name[]")  # Prometheus' own filter parameter
                registry = verifier.metrics.registry
                chosen = registry.restricted_registry(names) if names else registry
                body, ctype, code = generate_latest(chosen), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                ok = verifier.healthy()
                body, ctype, code = (
                    (b"ok\n" if ok else b"worker or watch stopped\n"),
                    "text/plain",
                    200 if ok else 503,
                )
            elif self.path == "/readyz":
                ok = verifier.synced()
                body, ctype, code = (
                    (b"ok\n" if ok else b"caches not synced\n"),
                    "text/plain",
                    200 if ok else 503,
                )
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args  # scrapes are not worth a log line

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server  # fmt: skip


def webhook(args: argparse.Namespace) -> Callable[[Metrics], Notifier] | None:
    """The trust webhook from `--notify-*`, or None when no URL is set."""
    if not args.notify_url:
        return None
    if args.notify_secret_file is None:
        raise ValueError("--notify-url needs --notify-secret-file (the HMAC key)")
    key = args.notify_secret_file.read_bytes().strip()
    if not key:
        raise ValueError(f"{args.notify_secret_file} is empty")
    config = WebhookConfig(
        url=args.notify_url,
        key=key,
        timeout_seconds=args.notify_timeout,
        ca_file=args.notify_ca_bundle,
    )
    return lambda m: Notifier(config, NotifyMetrics(m.notifications, m.notification_attempts))


def run(args: argparse.Namespace) -> int:
    try:
        bundle = BundleSource(args.ek_ca_bundle)
    except (OSError, BundleError) as err:
        log.error("--ek-ca-bundle: %s", err)
        return 2
    log.info("trusting EK CAs: %s", bundle.bundle.subjects)
    try:
        notifier = webhook(args)
    except (OSError, ValueError) as err:
        log.error("--notify-*: %s", err)
        return 2
    client = KubeClient(args.kubeconfig, user_agent="sod-verifier")
    verifier = Verifier(
        KubeIO(client, args.lease_namespace, args.challenges, args.renewals),
        bundle,
        VerifierConfig(
            ready_max_age_seconds=args.ready_max_age,
            resync_seconds=args.resync,
            workers=args.workers,
            challenge_interval_seconds=args.challenge_interval,
            renewal_batch=BatchSettings(window=args.renewal_batch),
        ),
        notifier=notifier,
        leading=args.no_leader_election,
    )
    server = serve(verifier, args.metrics_address, args.metrics_port) if args.metrics_port else None

    def _stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        verifier.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    verifier.start()
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", args.metrics_address, server.server_port)
    elector = None if args.no_leader_election else _elector(client, args)
    if elector is not None:
        lead_while_elected(verifier, elector)
    verifier.stop_event.wait()
    if elector is not None:
        verifier.follow()
        elector.release()  # a clean stop: the standby need not wait out the Lease
    if server is not None:
        server.shutdown()
    return 0


def lead_while_elected(verifier: Verifier, elector: LeaderElector) -> None:
    """Judge nodes while holding the Lease; on losing it stop writing at once and wait for
    it again. Returns when the verifier stops."""
    while elector.acquire(verifier.stop_event):
        lost = threading.Event()

        def on_lost(lost: threading.Event = lost) -> None:
            verifier.follow()  # no write after this, even by a reconcile under way
            lost.set()

        verifier.lead()
        elector.keep_renewing(on_lost)
        while not lost.wait(0.5):
            if verifier.stop_event.is_set():
                return
        log.warning("lost the Lease: standing by")


def _elector(client: KubeClient, args: argparse.Namespace) -> LeaderElector:
    return LeaderElector(client, lease_config(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "manifests":
        sys.stdout.write(rbac.render(args.namespace))
        return 0
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
