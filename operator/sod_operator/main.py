"""`sod-operator`: run the operator (kopf) with our settings, after winning leader election.

    sod-operator [--kubeconfig FILE] [--namespace NS ...] [--metrics-port 8080]
                 [--liveness-port 8081] [--bind-address 127.0.0.1]
                 [--lease-namespace NS --lease-name NAME --identity ID | --no-leader-election]
                 [--renewals-namespace NS --renewals-configmap NAME]
                 [relocation tunables, see --help]

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when leadership was lost (the
Deployment restarts the container, which then waits for the Lease like any other replica),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sod_operator.policy.settings import RelocationSettings


class _StandbyLiveness:
    """`/healthz` for a replica that waits for the Lease.

    kopf serves liveness only once it runs, i.e. after this replica leads; without this a
    standby would fail its liveness probe and be restarted over and over. Closed before kopf
    binds the same port.
    """

    def __init__(self, address: str, port: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.split("?")[0] == "/healthz"
                body = b'{"standby": true}' if ok else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # probes every few seconds: no log spam
                return

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _parser() -> argparse.ArgumentParser:
    d = RelocationSettings()
    p = argparse.ArgumentParser(
        prog="sod-operator",
        description="Security on Demand for KubeVirt: places and relocates SecureVMs.",
    )
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch SecureVMs only in this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (0: off)")
    p.add_argument("--liveness-port", type=int, default=8081, help="/healthz port (0: off)")
    p.add_argument(
        "--bind-address",
        default="127.0.0.1",
        help="address of the metrics and liveness servers (in a Pod: 0.0.0.0)",
    )
    from sod_operator.kube.leader import add_lease_args  # here: --help needs no client

    add_lease_args(p, name="sod-operator", namespace="default")
    from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_CONFIGMAP, TRUST_NAMESPACE

    t = p.add_argument_group("attestation (the verifier's fleet renewals of verdict expiries)")
    t.add_argument(
        "--renewals-namespace",
        default=TRUST_NAMESPACE,
        help="the verifier's namespace, where it publishes the renewals ConfigMap",
    )
    t.add_argument(
        "--renewals-configmap",
        default=RENEWALS_CONFIGMAP,
        help="the renewals ConfigMap's name (the verifier's --renewals)",
    )
    r = p.add_argument_group("relocation")
    r.add_argument("--max-migrations-per-cluster", type=int, default=d.max_migrations_per_cluster)
    r.add_argument("--max-outbound-per-node", type=int, default=d.max_outbound_per_node)
    r.add_argument("--retry-base-seconds", type=float, default=d.retry_base_seconds)
    r.add_argument("--retry-max-seconds", type=float, default=d.retry_max_seconds)
    r.add_argument("--node-cooldown-seconds", type=float, default=d.node_cooldown_seconds)
    r.add_argument("--mtd-budget", type=int, default=d.mtd_budget)
    r.add_argument("--resync-seconds", type=float, default=d.resync_seconds)
    r.add_argument("--chunk", type=int, default=500, help="SecureVMs planned per batch at most")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf's own per-handler success lines (one per watch event) are noise at INFO.
    logging.getLogger("kopf").setLevel(logging.DEBUG if args.debug else logging.WARNING)

    import kopf

    import sod_operator.handlers  # noqa: F401 - registers the handlers with kopf
    from sod_operator.adapters.runtime import Options, kube_for
    from sod_operator.kube.leader import LeaderElector, lease_config

    relocation = RelocationSettings(
        max_migrations_per_cluster=args.max_migrations_per_cluster,
        max_outbound_per_node=args.max_outbound_per_node,
        retry_base_seconds=args.retry_base_seconds,
        retry_max_seconds=args.retry_max_seconds,
        node_cooldown_seconds=args.node_cooldown_seconds,
        mtd_budget=args.mtd_budget,
        resync_seconds=args.resync_seconds,
    )
    options = Options(
        kubeconfig=args.kubeconfig,
        context=args.context,
        identity=args.identity,
        relocation=relocation,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        chunk=args.chunk,
        renewals_namespace=args.renewals_namespace,
        renewals_configmap=args.renewals_configmap,
    )
    log = logging.getLogger("sod.main")
    stop_flag = threading.Event()
    # Not `options.lost`: the controller sets that on every stop (it stops writing), so a clean
    # SIGTERM exited 1 without releasing the Lease.
    lease_lost = threading.Event()
    elector = None
    if not args.no_leader_election:
        elector = LeaderElector(
            kube_for(options).client,
            lease_config(args),
        )
        waiting = threading.Event()
        previous = {
            s: signal.signal(s, lambda *_: waiting.set()) for s in (signal.SIGTERM, signal.SIGINT)
        }
        standby = (
            _StandbyLiveness(args.bind_address, args.liveness_port) if args.liveness_port else None
        )
        try:
            acquired = elector.acquire(waiting)
        finally:
            if standby is not None:
                standby.close()
        if not acquired:
            return 0
        for s, handler in previous.items():
            signal.signal(s, handler)

        def lost() -> None:
            lease_lost.set()
            options.lost.set()  # stop writing now, before kopf winds down
            stop_flag.set()

        elector.keep_renewing(lost)
    liveness = (
        f"http://{args.bind_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    )
    log.info("starting as %s (%s)", args.identity, ", ".join(args.namespace) or "all namespaces")
    try:
        kopf.run(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
            memo=kopf.Memo(options=options, stop_flag=stop_flag),
            stop_flag=stop_flag,
        )
    finally:
        if elector is not None and not lease_lost.is_set():
            elector.release()
    return 1 if lease_lost.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
