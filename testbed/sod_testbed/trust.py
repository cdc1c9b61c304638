"""The trust monitor in the sandbox: per node a swtpm and a node-agent, plus the verifier.

Used by `sodctl sandbox up` (as node and cluster services of `LocalCluster`), by
`sodctl sandbox break|heal`, and by the e2e tier. Everything runs with least privilege,
exactly as in a cluster, so the apiserver itself enforces who may write what:

* `install()` applies `sod_operator.verifier.rbac.manifests()` (ServiceAccounts, ClusterRoles,
  the Roles in the verifier's namespace for its Lease and for the ConfigMap of its published
  nonces, which the agents may read, ValidatingAdmissionPolicies) and configures a local EK CA
  (`swtpm.LocalCa`);
* `start_node(node)` manufactures the node's TPM (an RSA EK, or for `node.tpm == "ecc"` an
  ECC P-256 one; certificate from that CA) and, as the platform team does when it racks a
  machine, enrolls that TPM's EK for the node's architecture (a `PlatformEnrollment` named
  after the node, `plain` included), runs swtpm, plays the simulated firmware of the node's
  architecture (`swtpm.boot_log(arch)` into PCRs 0, 4, 7, and its TCG2 event log next to the
  TPM state, which the agent sends with each quote), writes the simulated-architecture state
  (the node's architecture, `memoryViolations: 0`; `plain` declares none), and runs
  `sod-node-agent` with a ServiceAccount token **bound to the Node object** (so its user info
  carries `authentication.kubernetes.io/node-name`);
* `start_verifier()` runs `sod-verifier` with the verifier ServiceAccount's token (the only
  identity allowed to patch Nodes) and the CA bundle; it publishes a nonce every
  `challenge_interval` seconds in the ConfigMap `challenges` of `namespace`, which every agent
  watches (`--namespace`, `--challenges`);
* `break_node(node, how)`: `violation` (the simulated source reports memory violations),
  `pcr` (an unexpected measurement extended into PCR 4, not logged), `bootloader` (the
  firmware loads an unexpected boot component: extended into PCR 4 and logged, so a
  measured-boot policy names the event), `silence` (the agent is stopped);
  `heal_node(node)` undoes all four (a PCR can only be reset by a reboot: swtpm restarts,
  the firmware measures the boot log again; the AK is deterministic, so enrollment holds).

State lives under `<sandbox state dir>/trust/`; processes are supervised by the cluster
(`swtpm-<node>`, `agent-<node>`, `verifier`) and stopped with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from sod_operator.api.constants import API_VERSION
from sod_operator.attestation import platform
from sod_operator.attestation.eventlog import image_path
from sod_operator.verifier import rbac

from sod_testbed import swtpm
from sod_testbed.cluster import LocalCluster, SandboxError, free_ports
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path, write_kubeconfig_file
from sod_testbed.nodes import PLAIN, NodeSpec

log = logging.getLogger("sod.sandbox.trust")

FIELD_MANAGER = "sod-sandbox-trust"
VIOLATIONS_COUNTER = "memoryViolations"
BREAK_VIOLATIONS = 7
UNEXPECTED_MEASUREMENT = (4, b"unexpected kernel module: sod-sandbox-rootkit.ko")
TOKEN_SECONDS = 30 * 24 * 3600
HOW = ("violation", "pcr", "bootloader", "silence")
UNIX_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
# Host facts a simulated node of these architectures reports besides its architecture claim
# (what /proc/cpuinfo and /sys/module show on a real SEV-SNP or TDX host).
SIMULATED_HOST_FACTS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "sev-snp": (("sev_snp",), {"kvm_amd.sev_snp": "Y"}),
    "tdx": ((), {"kvm_intel.tdx": "Y"}),
}


@dataclass(frozen=True)
class TrustConfig:
    agent_interval: float = 5.0
    """Least seconds between an agent's answers to successive nonces (`--interval`)."""
    challenge_interval: float | None = None
    """Seconds between two nonces the verifier publishes (`--challenge-interval`; None: the
    agents' interval, so a bed's rounds are as long as before nonces were shared): an agent
    answers each new one once, so rounds come every max(this, agent_interval) seconds. Keep it
    below the profiles' freshnessSeconds: evidence is as old as the nonce it answers."""

    @property
    def round_seconds(self) -> float:
        """The verifier's `--challenge-interval`."""
        return self.agent_interval if self.challenge_interval is None else self.challenge_interval

    pcrs: str = "sha256:0-7"
    namespace: str = rbac.DEFAULT_NAMESPACE
    """The verifier's namespace: its Lease and the ConfigMap of its published nonces."""
    challenges: str = rbac.CHALLENGES_CONFIGMAP
    """That ConfigMap's name (`--challenges` of the verifier and of every agent)."""
    renewals: str = rbac.RENEWALS_CONFIGMAP
    """The ConfigMap of the fleet's expiry renewals, in `namespace` (`--renewals` of the
    verifier; the operator reads it)."""
    verifier_resync: float = 30.0
    ready_max_age: int = 120
    verifier_replicas: int = 1
    """Verifier processes (`verifier`, `verifier-1`, …); they elect a leader on the Lease
    `sod-verifier` in `namespace`, as the chart's replicas do."""
    lease_seconds: float = 15.0
    renew_seconds: float = 10.0
    retry_seconds: float = 2.0

    def operator_args(self) -> list[str]:
        """`sod-operator`'s flags naming this bed's renewals ConfigMap (the verifier's)."""
        return [f"--renewals-namespace={self.namespace}", f"--renewals-configmap={self.renewals}"]


_PLURALS = {
    "Namespace": ("v1", "namespaces", False),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ValidatingAdmissionPolicy": (
        "admissionregistration.k8s.io/v1",
        "validatingadmissionpolicies",
        False,
    ),
    "ValidatingAdmissionPolicyBinding": (
        "admissionregistration.k8s.io/v1",
        "validatingadmissionpolicybindings",
        False,
    ),
}


def manifest_path(obj: dict[str, Any]) -> str:
    api_version, plural, namespaced = _PLURALS[obj["kind"]]
    meta = obj["metadata"]
    return resource_path(
        api_version,
        plural,
        namespace=meta.get("namespace") if namespaced else None,
        name=meta["name"],
    )


def apply_manifests(api: KubeApi, manifests: list[dict[str, Any]]) -> None:
    for obj in manifests:
        api.apply(manifest_path(obj), obj, FIELD_MANAGER)


def token_kubeconfig(path: Path, server: str, ca_pem: bytes, user: str, token: str) -> Path:
    """A token kubeconfig whose context is named after the user."""
    return write_kubeconfig_file(path, server, ca_pem, user, {"token": token}, context=user)


class TrustBed:
    def __init__(self, cluster: LocalCluster, config: TrustConfig | None = None) -> None:
        self.cluster = cluster
        self.config = config or TrustConfig()
        self.dir = cluster.state_dir / "trust"
        self.ca = swtpm.LocalCa(self.dir / "ek-ca")
        self._installed = (self.dir / "installed").exists()

    # -- paths

    def tpm_state(self, node: str) -> Path:
        return self.dir / "tpm" / node / "state"

    def swtpm_for(self, node: str) -> swtpm.Swtpm:
        return swtpm.Swtpm(self.tpm_state(node), self.dir / "tpm" / node / "swtpm.sock")

    def event_log(self, node: str) -> Path:
        """The node's boot event log (its binary_bios_measurements)."""
        return self.dir / "tpm" / node / "binary_bios_measurements"

    def architecture_file(self, node: str) -> Path:
        """The architecture of the node's machine: its hardware, fixed when its TPM is made."""
        return self.dir / "tpm" / node / "architecture"

    def machine_architecture(self, node: str) -> str:
        return self.architecture_file(node).read_text().strip()

    def sim_state(self, node: str) -> Path:
        return self.dir / "sim" / f"{node}.json"

    @property
    def bundle_path(self) -> Path:
        return self.dir / "ek-ca-bundle.pem"

    def kubeconfig_for(self, name: str) -> Path:
        return self.dir / "identities" / f"{name}.kubeconfig"

    # -- identities

    def token(self, sa: str, bound_node: str | None = None) -> str:
        """A TokenRequest for `sa`; bound to the Node object when `bound_node` is given."""
        api = self.cluster.api()
        spec: dict[str, Any] = {"expirationSeconds": TOKEN_SECONDS}
        if bound_node is not None:
            node = api.get(resource_path("v1", "nodes", name=bound_node))
            spec["boundObjectRef"] = {
                "kind": "Node",
                "apiVersion": "v1",
                "name": bound_node,
                "uid": node["metadata"]["uid"],
            }
        path = resource_path(
            "v1",
            "serviceaccounts",
            namespace=self.config.namespace,
            name=sa,
            subresource="token",
        )
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        return str(self.cluster.api().create(path, body)["status"]["token"])

    def identity(self, name: str, sa: str, bound_node: str | None = None) -> Path:
        """A kubeconfig for the ServiceAccount `sa` (node-bound if asked), written once."""
        path = self.kubeconfig_for(name)
        if not path.exists():
            token_kubeconfig(
                path,
                self.cluster.server,
                self.cluster.pki.ca.cert.read_bytes(),
                name,
                self.token(sa, bound_node),
            )
        return path

    # -- set-up

    def install(self) -> None:
        if self._installed:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        apply_manifests(self.cluster.api(), rbac.manifests(self.config.namespace))
        self._wait_for_sa(rbac.AGENT_SA)
        self._wait_for_sa(rbac.VERIFIER_SA)
        self.ca.write_config()
        (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.config)) + "\n")
        (self.dir / "installed").write_text("ok\n")
        self._installed = True

    def _wait_for_sa(self, sa: str, timeout: float = 30.0) -> None:
        path = resource_path("v1", "serviceaccounts", namespace=self.config.namespace, name=sa)
        deadline = time.monotonic() + timeout
        while self.cluster.api().get_or_none(path) is None:
            if time.monotonic() > deadline:
                raise SandboxError(f"ServiceAccount {sa} did not appear within {timeout}s")
            time.sleep(0.1)

    def start_node(self, node: NodeSpec) -> None:
        self.install()
        state = self.tpm_state(node.name)
        if not state.exists():
            swtpm.manufacture(state, self.ca, ek=node.tpm)
        self.architecture_file(node.name).write_text(node.architecture + "\n")
        self.start_swtpm(node.name)
        self.enroll_platform(node.name)
        architecture = None if node.architecture == PLAIN else node.architecture
        counters = {VIOLATIONS_COUNTER: 0} if architecture else {}
        self.sim_state(node.name).parent.mkdir(parents=True, exist_ok=True)
        from sod_node_agent.facts import SimulatedState

        flags, params = SIMULATED_HOST_FACTS.get(node.architecture, ((), {}))
        SimulatedState(architecture, counters, flags, params).write(self.sim_state(node.name))
        self.identity(f"agent-{node.name}", rbac.AGENT_SA, bound_node=node.name)
        self.start_agent(node.name)

    def start_swtpm(self, node: str, chain: str | None = None) -> None:
        """Start the node's swtpm and play its firmware: the boot chain of its machine's
        architecture, or of `chain` (a root attacker booting another architecture's
        hypervisor image, e2e only)."""
        sw = self.swtpm_for(node)
        ctrl = f"{sw.socket}.ctrl"
        if len(ctrl.encode()) > UNIX_SOCKET_PATH_MAX:  # swtpm would fail with a bare IO error
            raise SandboxError(
                f"the swtpm control socket of {node} would be {ctrl} ({len(ctrl.encode())} "
                f"bytes), longer than a Unix socket path may be ({UNIX_SOCKET_PATH_MAX}); use a "
                "shorter sandbox state directory (--state-dir or $SOD_SANDBOX_DIR)"
            )
        for stale in (sw.socket, Path(ctrl)):
            stale.unlink(missing_ok=True)
        proc = self.cluster.run_process(f"swtpm-{node}", sw.argv())
        try:
            swtpm.wait_ready(sw.tcti, 10.0)
        except swtpm.SwtpmError as err:
            raise SandboxError(
                f"swtpm of {node} did not start: {err}; log {proc.log_path}"
            ) from err
        architecture = chain or self.machine_architecture(node)
        swtpm.simulated_boot(sw.tcti, architecture, self.event_log(node))

    def ek_fingerprint(self, node: str) -> str:
        """The node's EK fingerprint as the platform team recorded it at enrollment."""
        return (self.dir / "tpm" / node / "ek-fingerprint").read_text().strip()

    def _read_ek_fingerprint(self, node: str) -> str:
        """Read from the TPM itself (as `tpm2_getekcertificate` on the machine at
        provisioning, before the agent runs), never from what an agent published."""
        from sod_node_agent import tpm as agent_tpm

        with agent_tpm.session(self.swtpm_for(node).tcti) as session:
            cert = x509.load_der_x509_certificate(session.identity().ek_certificate)
        return platform.ek_fingerprint(cert)

    def enroll_platform(self, node: str) -> None:
        """The platform team enrolls the machine's EK for its architecture (cluster admin)."""
        fingerprint = self._read_ek_fingerprint(node)
        (self.dir / "tpm" / node / "ek-fingerprint").write_text(fingerprint + "\n")
        body = {
            "apiVersion": API_VERSION,
            "kind": "PlatformEnrollment",
            "metadata": {"name": node},
            "spec": {
                "architecture": self.machine_architecture(node),
                "ekPublicKeySha256": fingerprint,
                "description": "sod sandbox: enrolled when its TPM was manufactured",
            },
        }
        path = resource_path(API_VERSION, "platformenrollments", name=node)
        self.cluster.api().apply(path, body, FIELD_MANAGER)

    def agent_argv(self, node: str) -> list[str]:
        """The node-agent's command line: it answers the nonces the verifier publishes in
        `challenges` in `namespace` (read with its node-bound token)."""
        return [
            sys.executable,
            "-m",
            "sod_node_agent.main",
            "--node",
            node,
            "--tcti",
            self.swtpm_for(node).tcti,
            "--pcrs",
            self.config.pcrs,
            "--interval",
            str(self.config.agent_interval),
            "--simulated-state",
            str(self.sim_state(node)),
            "--event-log",
            str(self.event_log(node)),
            "--kubeconfig",
            str(self.kubeconfig_for(f"agent-{node}")),
            "--namespace",
            self.config.namespace,
            "--challenges",
            self.config.challenges,
        ]

    def start_agent(self, node: str) -> None:
        self.cluster.run_process(
            f"agent-{node}",
            self.agent_argv(node),
            env={"TSS2_LOG": "all+none", "PYTHONUNBUFFERED": "1"},
        )

    @staticmethod
    def verifier_name(replica: int) -> str:
        """Replica 0 is `verifier` (its log, its metrics-port file), the others `verifier-<i>`."""
        return "verifier" if replica == 0 else f"verifier-{replica}"

    def start_verifier(self, replica: int = 0) -> int:
        """Run one verifier replica (its name is its Lease identity); returns its metrics port."""
        self.install()
        if not self.bundle_path.exists():
            self.bundle_path.write_bytes(self.ca.bundle_pem())
        kubeconfig = self.identity("verifier", rbac.VERIFIER_SA)
        (port,) = free_ports(1)
        name = self.verifier_name(replica)
        self.cluster.run_process(
            name, self.verifier_argv(name, kubeconfig, port), env={"PYTHONUNBUFFERED": "1"}
        )
        (self.dir / f"{name}-metrics-port").write_text(f"{port}\n")
        return port

    def verifier_argv(self, identity: str, kubeconfig: Path, port: int) -> list[str]:
        """A verifier replica's command line: its Lease and the ConfigMap of its nonces both
        live in `namespace`."""
        return [
            sys.executable,
            "-m",
            "sod_operator.verifier.main",
            "run",
            "--ek-ca-bundle",
            str(self.bundle_path),
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-port",
            str(port),
            "--resync",
            str(self.config.verifier_resync),
            "--ready-max-age",
            str(self.config.ready_max_age),
            "--challenge-interval",
            str(self.config.round_seconds),
            "--challenges",
            self.config.challenges,
            "--renewals",
            self.config.renewals,
            *self._lease_args(identity),
        ]

    def _lease_args(self, identity: str) -> list[str]:
        c = self.config
        return [
            f"--lease-namespace={c.namespace}",
            f"--identity={identity}",
            f"--lease-seconds={c.lease_seconds}",
            f"--renew-seconds={c.renew_seconds}",
            f"--retry-seconds={c.retry_seconds}",
        ]

    # services for LocalCluster(node_services=..., cluster_services=...)

    def node_service(self, cluster: LocalCluster, node: NodeSpec) -> None:
        del cluster
        self.start_node(node)

    def cluster_service(self, cluster: LocalCluster) -> None:
        del cluster
        for replica in range(self.config.verifier_replicas):
            self.start_verifier(replica)

    # -- break and heal

    def nodes(self) -> list[str]:
        tpm_dir = self.dir / "tpm"
        return sorted(p.name for p in tpm_dir.iterdir()) if tpm_dir.is_dir() else []

    def require_node(self, node: str) -> None:
        if node not in self.nodes():
            raise SandboxError(
                f"node {node!r} has no TPM in this sandbox; nodes with a node-agent: "
                f"{', '.join(self.nodes()) or 'none'}"
            )

    def _set_violations(self, node: str, count: int) -> None:
        from sod_node_agent.facts import SimulatedState

        path = self.sim_state(node)
        current = SimulatedState.load(path)
        counters = dict(current.counters)
        counters[VIOLATIONS_COUNTER] = count
        SimulatedState(
            current.architecture, counters, current.cpu_flags, current.module_parameters
        ).write(path)

    def agent_running(self, node: str) -> bool:
        proc = self.cluster.processes.get(f"agent-{node}")
        return proc is not None and proc.alive()

    def stop_agent(self, node: str) -> None:
        proc = self.cluster.processes.get(f"agent-{node}")
        if proc is not None:
            proc.stop()

    def reboot(self, node: str, chain: str | None = None) -> None:
        """Restart the node's swtpm (PCRs reset) and replay the firmware's boot log."""
        proc = self.cluster.processes.get(f"swtpm-{node}")
        if proc is not None:
            proc.stop()
        self.start_swtpm(node, chain)

    def pcrs_golden(self, node: str) -> bool:
        # libtss2 reads TSS2_LOG once, at its first use in the process: set it before, or the
        # readiness probing of a reboot that follows (swtpm.wait_ready) prints TCTI errors.
        os.environ.setdefault("TSS2_LOG", "all+none")
        from tpm2_pytss import ESAPI

        with ESAPI(self.swtpm_for(node).tcti) as ectx:
            _, _, digests = ectx.pcr_read("sha256:0,4,7")
            values = [bytes(d).hex() for d in digests]
        return values == list(swtpm.golden_pcrs(self.machine_architecture(node)).values())

    def break_node(self, node: str, how: str) -> str:
        self.require_node(node)
        if how == "violation":
            self._set_violations(node, BREAK_VIOLATIONS)
            return (
                f"{node}: the simulated source now reports {VIOLATIONS_COUNTER}={BREAK_VIOLATIONS}"
            )
        if how == "pcr":
            swtpm.extend(self.swtpm_for(node).tcti, [UNEXPECTED_MEASUREMENT])
            return (
                f"{node}: extended an unexpected measurement into PCR {UNEXPECTED_MEASUREMENT[0]}"
            )
        if how == "bootloader":
            component = swtpm.UNEXPECTED_BOOT_COMPONENT
            swtpm.measure(self.swtpm_for(node).tcti, component, self.event_log(node))
            return (
                f"{node}: the firmware loaded an unexpected boot component "
                f"{image_path(component.data)} (PCR {component.pcr}, in the event log)"
            )
        if how == "silence":
            self.stop_agent(node)
            return f"{node}: node-agent stopped; its evidence expires after the profile's freshness"
        raise SandboxError(f"--how must be one of {', '.join(HOW)}, not {how!r}")

    def heal_node(self, node: str) -> list[str]:
        self.require_node(node)
        done = []
        from sod_node_agent.facts import SimulatedState

        if SimulatedState.load(self.sim_state(node)).counters.get(VIOLATIONS_COUNTER, 0):
            self._set_violations(node, 0)
            done.append(f"{VIOLATIONS_COUNTER} reset to 0")
        if not self.pcrs_golden(node):
            self.reboot(node)
            done.append("rebooted (swtpm restarted, boot log measured again)")
        if not self.agent_running(node):
            self.start_agent(node)
            done.append("node-agent started")
        return done or ["nothing to heal"]


def attach(state_dir: Path, config: TrustConfig | None = None) -> TrustBed:
    """The trust bed of a running sandbox (for `sodctl sandbox break|heal`)."""
    cluster = LocalCluster.attach(state_dir)
    if cluster is None or not any(p.alive() for p in cluster.processes.values()):
        raise SandboxError(
            f"no sandbox running from {state_dir}: start one with `sodctl sandbox up`"
        )
    saved = state_dir / "trust" / "config.json"
    if config is None and saved.exists():
        config = TrustConfig(**json.loads(saved.read_text()))
    bed = TrustBed(cluster, config)
    if not bed.dir.is_dir():
        raise SandboxError("this sandbox runs without the trust monitor (no node-agents)")
    return bed


__all__ = ["HOW", "ApiError", "TrustBed", "TrustConfig", "attach"]
