"""A private local control plane for the reliability experiments that must not share one.

Restarting kube-apiserver or etcd, or turning the apiserver's audit log on, would disturb every
other e2e module on the session cluster; those experiments get a `PrivateBed` of their own
(etcd, kube-apiserver, controller-manager, scheduler, kwok, our CRDs and KubeVirt's, real
virt-api and virt-controller, the virt-handler player in a thread — about half a minute to
start).

`restart(component)` stops one control-plane process (SIGTERM, then SIGKILL) and starts it
again with the same command line (same ports, same etcd data), plus optional extra flags; it
returns once the component is healthy again. `audit_events()` reads the audit log when the
bed was started with `audit=True`.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sod_testbed.cluster import LocalCluster
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import KubeApi, resource_path
from sod_testbed.nodes import NodeSpec
from sod_testbed.trust import TrustBed, TrustConfig

from tests.e2e.harness import PlayerInThread

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
"""Every request made by a ServiceAccount (the operator runs as one), nothing else."""


class PrivateBed:
    def __init__(
        self,
        state_dir: Path,
        nodes: Sequence[NodeSpec],
        player: PlayerConfig,
        *,
        audit: bool = False,
    ):
        self.cluster = LocalCluster(state_dir, nodes)
        self.player_config = player
        self.player: PlayerInThread | None = None
        self.audit = audit
        self.audit_log = state_dir / "audit.log"

    def start(self) -> PrivateBed:
        self.cluster.start()
        if self.audit:
            policy = self.cluster.state_dir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            self.restart(
                "kube-apiserver",
                extra=(
                    f"--audit-policy-file={policy}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json",
                    "--audit-log-mode=blocking",
                ),
            )
        # The player logs into the cluster's log directory, which exists from start() on.
        self.player = PlayerInThread(self.cluster, self.player_config)
        self.cluster.on_stop(self.player.stop)
        self.player.start()
        return self

    def start_trust_monitor(self) -> TrustBed:
        """The real trust monitor on every node (swtpm + node-agent) and the verifier: agents
        answer a nonce at most once a second, the verifier resyncs every 5 s."""
        trust = TrustBed(self.cluster, TrustConfig(agent_interval=1.0, verifier_resync=5.0))
        trust.install()
        for node in self.cluster.nodes:
            trust.start_node(node)
        trust.start_verifier()
        return trust

    def stop(self) -> None:
        self.cluster.stop(remove_state=False)

    def create_namespace(self, name: str) -> None:
        """A namespace, once its default ServiceAccount exists (pods and tokens need it)."""
        self.cluster.api().create(
            resource_path("v1", "namespaces"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.cluster.wait_for_service_account(name, timeout=30)

    def restart(
        self, component: str, extra: Sequence[str] = (), down_seconds: float = 0.0
    ) -> float:
        """Stop `component` and start it again; returns the seconds until it was healthy."""
        proc = self.cluster.processes[component]
        argv = [a for a in proc.record.argv if a not in extra]
        proc.stop()
        time.sleep(down_seconds)
        t0 = time.monotonic()
        self.cluster.run_process(component, [*argv, *extra])
        self._wait_healthy(component)
        return time.monotonic() - t0

    def stop_component(self, component: str) -> Sequence[str]:
        """Stop `component` (for an outage of a chosen length); returns its command line."""
        proc = self.cluster.processes[component]
        proc.stop()
        return proc.record.argv

    def start_component(self, component: str, argv: Sequence[str]) -> None:
        self.cluster.run_process(component, argv)
        self._wait_healthy(component)

    def _wait_healthy(self, component: str, timeout: float = 60.0) -> None:
        url, context = self._health(component)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{component} not healthy {timeout:.0f}s after its restart")

    def _health(self, component: str) -> tuple[str, ssl.SSLContext | None]:
        """What its Deployment's readiness probe would ask (virt-controller: `/leader`, ready
        only once it holds its Lease again; virt-api: its subresource API's health)."""
        ports = self.cluster.ports
        if component == "etcd":
            return f"http://127.0.0.1:{ports['etcd']}/health", None
        if component == "kube-apiserver":
            pki = self.cluster.pki
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
            return f"{self.cluster.server}/readyz", ctx
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # a probe, as the kubelet's: no identity check
        if component == "virt-controller":
            return f"https://127.0.0.1:{ports['virt-controller']}/leader", insecure
        if component == "virt-api":
            path = "/apis/subresources.kubevirt.io/v1/healthz"
            return f"https://127.0.0.1:{ports['virt-api']}{path}", insecure
        raise ValueError(f"no health check for {component}")

    def audit_events(self) -> Iterator[dict[str, Any]]:
        if not self.audit_log.exists():
            return
        for line in self.audit_log.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


class As(KubeApi):
    """The admin client, impersonating `user` (in `group`): a tenant's requests, as the
    apiserver authorizes them, without minting its credentials."""

    def __init__(self, kubeconfig: Path, user: str, group: str = "system:authenticated"):
        super().__init__(kubeconfig, user_agent=f"reliability-as-{user}")
        self._headers["Impersonate-User"] = user
        self._headers["Impersonate-Group"] = group
