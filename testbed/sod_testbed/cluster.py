"""`LocalCluster`: a real Kubernetes control plane on loopback, used by the e2e harness and by
`sodctl sandbox` alike.

What `start()` brings up, in order (each step waits for health with a clear timeout, and every
component logs to `<state_dir>/logs/<name>.log`):

1. a PKI (`pki.py`): CA, apiserver serving cert, admin client cert (CN=admin, O=system:masters),
   service-account signing key pair;
2. etcd 3.6 (data in `<state_dir>/etcd`, fsync off);
3. kube-apiserver: TLS on 127.0.0.1, `--authorization-mode=Node,RBAC`, the default admission
   plugins plus NodeRestriction (ValidatingAdmissionPolicy is on by default), SA token signing;
4. `<state_dir>/kubeconfig` with the admin client cert embedded (the only credentials used);
5. our CRDs (`crds/*.yaml`) and KubeVirt's (built by tools/build-testbed.sh), by server-side
   apply, waited for `Established` (before the controllers, so the garbage collector knows them);
6. kube-controller-manager (garbage collection of ownerReferences, namespace deletion,
   service-account tokens, CSR signing with the sandbox CA), kube-scheduler, kwok;
7. the fake Nodes (`nodes.py`), waited for `Ready` (kwok heartbeats them);
8. real KubeVirt (`kubevirt.py`): namespace, RBAC, KubeVirt CR, virt-api with its webhooks,
   virt-controller holding its Lease (unless `kubevirt=False`);
9. the node services, then the cluster services (the virt-handler player, the operator, ...),
   then whatever the caller runs with `run_process`.

Free ports are chosen at start. `stop()` signals the process group of every process it started
(each runs in its own session) and waits for it; nothing is left behind.

State file: `<state_dir>/state.json` records each process (pid + kernel start time), the ports
and the nodes, rewritten after every process start, so `LocalCluster.attach(state_dir)` (used by
`sodctl sandbox down/status` from another shell) can find and stop them, and `start()` refuses
to start twice on one state directory while the first is alive.

Extension points:

* `node_services`: callables `service(cluster, node)` run once per node after the nodes are
  Ready, e.g. the trust monitor's per-node swtpm + node-agent. They start their processes with
  `cluster.run_process(name, argv, env)` so they are supervised, logged and stopped with the rest.
  `pki.issue_client` and `write_kubeconfig` give a service its own identity (for a node agent:
  CN=system:node:NAME, O=system:nodes, so NodeRestriction applies to it).
* `cluster_services`: callables `service(cluster)` run after the node services (the virt-handler
  player as a process, the verifier, the operator).
* `run_process(name, argv, env)`: any extra supervised process (e.g. the operator).
* `on_stop(callback)`: in-process components (the player run in a thread) stopped first.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sod_testbed.binaries import REPO_ROOT, Binaries, find_binaries
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path, write_kubeconfig_file
from sod_testbed.kubevirt import kwok_stages_with_image_ids, start_kubevirt
from sod_testbed.nodes import NodeSpec
from sod_testbed.pki import CertPair, Pki, create_pki, load_pki
from sod_testbed.processes import ManagedProcess, ProcessRecord, tail_file

log = logging.getLogger("sod.sandbox")

STATE_FILE = "state.json"
FIELD_MANAGER = "sod-sandbox"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"

NodeService = Callable[["LocalCluster", NodeSpec], None]
ClusterService = Callable[["LocalCluster"], None]


class SandboxError(RuntimeError):
    """The sandbox could not start or be reached; the message says which part and why."""


class AlreadyRunning(SandboxError):
    """A sandbox on this state directory is already up."""


def default_state_dir() -> Path:
    env = os.environ.get("SOD_SANDBOX_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sod-operator" / "sandbox"


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """A kubeconfig with embedded CA and client certificate data (no references to files)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    credentials = {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}
    return write_kubeconfig_file(path, server, ca.read_bytes(), user, credentials)


class LocalCluster:
    def __init__(
        self,
        state_dir: Path,
        nodes: Sequence[NodeSpec] = (),
        *,
        binaries: Binaries | None = None,
        crd_dir: Path | None = REPO_ROOT / "crds",
        node_services: Sequence[NodeService] = (),
        cluster_services: Sequence[ClusterService] = (),
        start_timeout: float = 90.0,
        kubevirt: bool = True,
    ):
        self.state_dir = state_dir
        self.nodes = list(nodes)
        self._binaries = binaries
        self.crd_dir = crd_dir
        self.node_services = list(node_services)
        self.cluster_services = list(cluster_services)
        self.start_timeout = start_timeout
        self.kubevirt = kubevirt
        self.processes: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self._stop_callbacks: list[Callable[[], None]] = []
        self._api: KubeApi | None = None
        self._lock_file: Any = None

    # ---- paths -----------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def pki(self) -> Pki:
        return load_pki(self.pki_dir)

    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(self.kubeconfig)
        return self._api

    def log_files(self) -> dict[str, Path]:
        """Every component log, by name (includes in-process components that log to a file)."""
        if not self.log_dir.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bring the whole bed up; on any failure stop what was started and raise SandboxError."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        previous = self._read_state()
        if previous and any(ProcessRecord.from_json(p).alive() for p in previous["processes"]):
            self._release_lock()
            raise AlreadyRunning(
                f"a sandbox is already running from {self.state_dir} "
                f"(kubeconfig {self.kubeconfig}); stop it first with `sodctl sandbox down`"
            )
        self._clean_state_dir()
        t0 = time.monotonic()
        try:
            self._start_all()
        except BaseException:
            log.error("sandbox start failed; stopping what was started")
            self.stop(remove_state=False)
            raise
        self.timings["total"] = time.monotonic() - t0
        self._write_state()

    def _start_all(self) -> None:
        b = self.binaries
        names = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"]
        names += ["virt-api", "virt-controller"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))

        with self._timed("pki"):
            create_pki(self.pki_dir, dt.datetime.now(dt.UTC))
        pki = self.pki

        with self._timed("etcd"):
            self._start_etcd(b)
        with self._timed("kube-apiserver"):
            self._start_apiserver(b, pki)
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.admin, "admin")
        with self._timed("namespace default"):
            self._wait(
                "namespace default",
                lambda: self.api().get_or_none("/api/v1/namespaces/default") is not None,
                "kube-apiserver",
            )

        # CRDs before the controller-manager: its garbage collector then watches VMIs from the
        # start instead of discovering them up to 30 s later.
        with self._timed("crds"):
            self.install_crds()
        with self._timed("controllers"):
            self._start_controllers(b, pki)
        with self._timed("nodes"):
            self.create_nodes(self.nodes)
        with self._timed("service accounts"):
            self.wait_for_service_account("default")
        if self.kubevirt:
            with self._timed("kubevirt"):
                start_kubevirt(self)
        for node in self.nodes:
            for service in self.node_services:
                label = getattr(service, "__name__", "node service").replace("_", " ")
                with self._timed(f"{label} on {node.name}"):
                    service(self, node)
        for cluster_service in self.cluster_services:
            label = getattr(cluster_service, "__name__", "service").replace("_", " ")
            with self._timed(label):
                cluster_service(self)

    def _start_etcd(self, b: Binaries) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self.run_process(
            "etcd",
            [
                str(b.etcd),
                "--name=sandbox",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=sandbox={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=8589934592",
            ],
        )
        self._wait("etcd /health", lambda: _http_ok(f"{client}/health"), "etcd")

    def _start_apiserver(self, b: Binaries, pki: Pki) -> None:
        port = self.ports["apiserver"]
        self.run_process(
            "kube-apiserver",
            [
                str(b.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                # Front-proxy (aggregation) settings: without them every component logs that the
                # requestheader CA bundle is missing.
                f"--requestheader-client-ca-file={pki.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy.cert}",
                f"--proxy-client-key-file={pki.front_proxy.key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The kubernetes Service's endpoint would be 127.0.0.1, which Endpoints reject.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=30m",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        self._wait(
            "kube-apiserver /readyz",
            lambda: _http_ok(f"https://127.0.0.1:{port}/readyz", ctx),
            "kube-apiserver",
        )

    def _start_controllers(self, b: Binaries, pki: Pki) -> None:
        kc = str(self.kubeconfig)
        auth = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        ]
        self.run_process(
            "kube-controller-manager",
            [
                str(b.kube_controller_manager),
                *auth,
                f"--secure-port={self.ports['controller-manager']}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        self.run_process(
            "kube-scheduler",
            [
                str(b.kube_scheduler),
                *auth,
                f"--secure-port={self.ports['scheduler']}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        stages = kwok_stages_with_image_ids(b.kwok_stages, self.state_dir / "kwok-stages.yaml")
        self.run_process(
            "kwok",
            [
                str(b.kwok),
                f"--kubeconfig={kc}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{self.ports['kwok']}",
            ],
        )
        for name, port in (
            ("kube-controller-manager", self.ports["controller-manager"]),
            ("kube-scheduler", self.ports["scheduler"]),
        ):
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE  # self-signed serving cert made at start
            self._wait(
                f"{name} /healthz",
                functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz", insecure),
                name,
            )

    def stop(self, remove_state: bool = True) -> None:
        """Stop everything this sandbox started, in reverse order; optionally remove its state."""
        for callback in reversed(self._stop_callbacks):
            try:
                callback()
            except Exception:
                log.exception("stopping an in-process component failed")
        self._stop_callbacks.clear()
        if self._api is not None:
            self._api.close_watches()
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        self.processes.clear()
        if remove_state:
            self._remove_state_dir()
        else:
            self._write_state()
        self._release_lock()

    @classmethod
    def attach(cls, state_dir: Path) -> LocalCluster | None:
        """The sandbox recorded in `state_dir`, with its processes (alive or not), or None."""
        cluster = cls(state_dir)
        state = cluster._read_state()
        if state is None:
            return None
        cluster.ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        cluster.nodes = [
            NodeSpec(
                n["name"],
                n["architecture"],
                n.get("labels", {}),
                tpm=n.get("tpm", "rsa"),
                cpu_kind=n.get("cpuKind", ""),
            )
            for n in state.get("nodes", [])
        ]
        for data in state["processes"]:
            record = ProcessRecord.from_json(data)
            cluster.processes[record.name] = ManagedProcess(record)
        cluster.timings = state.get("timings", {})
        return cluster

    def status(self) -> dict[str, Any]:
        return {
            "stateDir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server if "apiserver" in self.ports else None,
            "processes": {
                name: {"pid": p.record.pid, "alive": p.alive(), "log": str(p.log_path)}
                for name, p in self.processes.items()
            },
            "nodes": [n.name for n in self.nodes],
        }

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._stop_callbacks.append(callback)

    # ---- extension points ------------------------------------------------------------------

    def run_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start a supervised process: own process group, log `logs/<name>.log`, in the state
        file, stopped by `stop()`. Names are unique within a sandbox."""
        if name in self.processes and self.processes[name].alive():
            raise SandboxError(f"a process named {name!r} is already running in this sandbox")
        proc = ManagedProcess.start(
            name, argv, self.log_dir / f"{name}.log", env=env, cwd=cwd or self.state_dir
        )
        self.processes[name] = proc
        self._write_state()
        return proc

    def install_crds(self) -> list[str]:
        """Server-side apply our CRDs (what exists in crd_dir) and KubeVirt's; wait Established."""
        crds: list[dict[str, Any]] = []
        if self.crd_dir is not None and self.crd_dir.is_dir():
            for path in sorted(self.crd_dir.glob("*.yaml")):
                crds += [d for d in yaml.safe_load_all(path.read_text()) if d]
        crds += json.loads(self.binaries.kubevirt_crds.read_text())["items"]
        api = self.api()
        names = []
        for crd in crds:
            name = crd["metadata"]["name"]
            api.apply(
                resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name),
                crd,
                FIELD_MANAGER,
            )
            names.append(name)
        for name in names:
            self._wait(
                f"CRD {name} Established",
                functools.partial(_crd_established, api, name),
                "kube-apiserver",
            )
        return names

    def create_nodes(self, specs: Sequence[NodeSpec]) -> None:
        """Create (or update) kwok Nodes and wait until kwok reports them Ready."""
        api = self.api()
        for spec in specs:
            manifest = spec.manifest()
            path = resource_path("v1", "nodes", name=spec.name)
            try:
                # Created with its status in one request, so kwok never initializes a node
                # without our capacity (its node-initialize stage keeps what is there).
                api.create(resource_path("v1", "nodes"), manifest)
            except ApiError as err:
                if err.status != 409:
                    raise
                status = manifest.pop("status")
                api.apply(path, manifest, FIELD_MANAGER)
                resources = {k: status[k] for k in ("allocatable", "capacity")}
                api.merge_patch(path + "/status", {"status": resources})
            if spec not in self.nodes:
                self.nodes.append(spec)
        for spec in specs:
            self._wait(
                f"node {spec.name} Ready",
                functools.partial(_node_ready, api, spec.name),
                "kwok",
            )
        self._write_state()

    def delete_nodes(self, names: Sequence[str]) -> None:
        """Delete Nodes made by `create_nodes` and forget them: later users of `nodes` (e.g. a
        trust monitor starting one agent per node) must not find a node that is gone."""
        api = self.api()
        for name in names:
            try:
                api.delete(resource_path("v1", "nodes", name=name))
            except ApiError as err:
                if err.status != 404:
                    raise
        self.nodes = [n for n in self.nodes if n.name not in names]
        self._write_state()

    def wait_for_service_account(self, namespace: str, timeout: float | None = None) -> None:
        """Wait until the controller-manager created the namespace's `default` ServiceAccount
        (pods cannot be created in a namespace before that)."""
        api = self.api()
        path = resource_path("v1", "serviceaccounts", namespace=namespace, name="default")
        self._wait(
            f"ServiceAccount {namespace}/default",
            lambda: api.get_or_none(path) is not None,
            "kube-controller-manager",
            timeout,
        )

    def wait_until(
        self, what: str, ready: Callable[[], bool], component: str, timeout: float | None = None
    ) -> None:
        """Wait for `ready()`, failing at once (with its log) if `component` exits."""
        self._wait(what, ready, component, timeout)

    # ---- helpers ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[step] = time.monotonic() - t0
        log.info("sandbox: %s ready in %.2fs", step, self.timings[step])

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        component: str,
        timeout: float | None = None,
    ) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            proc = self.processes.get(component)
            if proc is not None and not proc.alive():
                raise SandboxError(
                    f"{component} exited (code {proc.exit_code()}) while waiting for {what}; "
                    f"last lines of {proc.log_path}:\n{proc.tail(4000)}"
                )
            try:
                if ready():
                    return
                last_error = None
            except (ApiError, OSError) as err:
                last_error = err
            time.sleep(0.1)
        detail = f" (last error: {last_error})" if last_error else ""
        proc = self.processes.get(component)
        tail = f"\nlast lines of {proc.log_path}:\n{proc.tail(4000)}" if proc else ""
        raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{tail}")

    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise SandboxError(
                f"{self._state_path()} is not valid JSON ({err}); remove it"
            ) from err
        return data

    def _write_state(self) -> None:
        if not self.state_dir.is_dir():
            return
        state = {
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "nodes": [
                {
                    "name": n.name,
                    "architecture": n.architecture,
                    "labels": dict(n.labels),
                    "tpm": n.tpm,
                    "cpuKind": n.cpu_kind,
                }
                for n in self.nodes
            ],
            "processes": [p.record.to_json() for p in self.processes.values()],
            "timings": self.timings,
        }
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_path())

    def _clean_state_dir(self) -> None:
        """Remove what a previous (dead) sandbox left, keeping the lock file."""
        for child in self.state_dir.iterdir():
            if child.name == ".lock":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _remove_state_dir(self) -> None:
        self._release_lock()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _acquire_lock(self) -> None:
        if self._lock_file is not None:
            return
        f = (self.state_dir / ".lock").open("w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise AlreadyRunning(
                f"another `sodctl sandbox up` is starting a sandbox in {self.state_dir}"
            ) from None
        self._lock_file = f

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _crd_established(api: KubeApi, name: str) -> bool:
    crd = api.get(resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name))
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _node_ready(api: KubeApi, name: str) -> bool:
    node = api.get(resource_path("v1", "nodes", name=name))
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def tail_logs(cluster: LocalCluster, max_bytes: int = 6000) -> str:
    """The tail of every component log, one section each (for failure reports)."""
    parts = []
    for name, path in cluster.log_files().items():
        parts.append(f"===== {name} ({path}) =====\n{tail_file(path, max_bytes)}")
    return "\n".join(parts)
