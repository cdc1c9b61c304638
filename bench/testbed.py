"""The sandbox the cluster benchmarks run in: a real control plane (`LocalCluster`: etcd,
kube-apiserver, controller-manager, scheduler, kwok, virt-api, virt-controller), the
virt-handler player (KubeVirt's node side) in a thread, the
example profiles and packages, and the operator as its own process (so its CPU time and peak
RSS are its own).

Node verdicts are written the way the verifier writes them (the profile label set to
`verified`, or removed) by the benchmark itself: the reaction benchmarks measure the operator
from the moment a verdict is written, so the verifier is not in the loop here (it has its own
benchmark). A watch records when each VirtualMachineInstanceMigration first appears, on the
benchmark's clock, with the apiserver's watch delivery included.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import workload

Json = dict[str, Any]
KUBEVIRT = "kubevirt.io/v1"
SOD = "sod.dev/v1alpha1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of a live process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


class ObjectWatch:
    """Keeps the objects of one resource from an informer (`sod_operator.kube.Informer`), and
    when each was first seen (perf_counter); `history` keeps (time, key, object) of every
    event after the first list when asked to."""

    def __init__(
        self,
        kubeconfig: Path,
        path: str,
        keep_history: bool = False,
        reduce: Callable[[Json], Any] | None = None,
    ) -> None:
        from sod_operator.kube import Informer
        from sod_testbed.kubeapi import KubeApi

        # A client of its own: stopping a watch closes its stream, and that connection must
        # never go back into a pool other requests use.
        self.api = KubeApi(kubeconfig)
        self.path = path
        self.keep_history = keep_history
        self.reduce = reduce
        """Keep only `reduce(obj)` of each object (large lists: 20,000 SecureVMs)."""
        self.history: list[tuple[float, tuple[str, str], Json]] = []
        self.seen: dict[tuple[str, str], float] = {}
        self.objects: dict[tuple[str, str], Json] = {}
        self.changed = threading.Condition()
        self._listed = False
        self._informer = Informer(
            self.api, path, handler=self._on_event, transform=reduce, watch_timeout=240
        )

    def start(self) -> ObjectWatch:
        self._informer.start()
        if not self._informer.wait_synced(120):
            raise TimeoutError(f"could not list {self.path}")
        with self.changed:  # the first list's objects are all in (handlers run before SYNCED)
            self.changed.wait_for(lambda: self._listed, timeout=120)
        return self

    def _on_event(self, etype: str, obj: Json) -> None:
        now = time.perf_counter()
        with self.changed:
            if etype == "SYNCED":
                self._listed = True
                self.changed.notify_all()
                return
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            self.seen.setdefault(key, now)
            if self.keep_history and self._listed:
                self.history.append((now, key, obj))
            if etype == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = self.reduce(obj) if self.reduce else obj
            self.changed.notify_all()

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        """Wait until `predicate(self)` is truthy (evaluated under the lock); return it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.changed.wait(min(left, 0.5))

    def stop(self) -> None:
        self._informer.stop()
        self.api.close_watches()


def migration_watch(kubeconfig: Path, keep_history: bool = False) -> ObjectWatch:
    """Every VirtualMachineInstanceMigration, cluster-wide."""
    from sod_testbed.kubeapi import resource_path

    return ObjectWatch(
        kubeconfig, resource_path(KUBEVIRT, "virtualmachineinstancemigrations"), keep_history
    )


class Recorder:
    """Several `ObjectWatch`es keeping their history, each event stamped on the wall clock
    (time.time(): a Timeline holds epoch seconds)."""

    def __init__(self, watches: dict[str, ObjectWatch]) -> None:
        self.watches = watches
        # ObjectWatch stamps perf_counter; one offset turns it into time.time().
        self.offset = time.time() - time.perf_counter()

    def start(self) -> Recorder:
        for w in self.watches.values():
            w.start()
        return self

    def stop(self) -> None:
        for w in self.watches.values():
            w.stop()

    def by_kind(self) -> dict[str, list[tuple[float, tuple[str, str], Json]]]:
        """Each watch's events in the order seen: (epoch, (namespace, name), object)."""
        out = {}
        for kind, w in self.watches.items():
            with w.changed:
                out[kind] = [(t + self.offset, key, obj) for t, key, obj in w.history]
        return out

    def merged(self) -> list[tuple[float, str, Json]]:
        """Every watch's events in one list by time: (epoch, kind, object)."""
        events = [(t, kind, obj) for kind, kept in self.by_kind().items() for t, _, obj in kept]
        return sorted(events, key=lambda e: e[0])

    def forget(self) -> None:
        """Drop the history (it only grows)."""
        for w in self.watches.values():
            with w.changed:
                w.history.clear()


@dataclass
class OperatorProcess:
    proc: Any

    @property
    def pid(self) -> int:
        return int(self.proc.record.pid)

    def usage(self) -> tuple[float, int]:
        return process_usage(self.pid)


class Bed:
    """A running sandbox for one benchmark."""

    def __init__(self, cluster: Any, player: Any) -> None:
        self.cluster = cluster
        self.api = cluster.api()
        self.player = player
        self.operator: OperatorProcess | None = None
        self._spy: subprocess.Popen[bytes] | None = None

    # ---- catalog and nodes -------------------------------------------------------------

    def install_catalog(self) -> None:
        from sod_testbed.kubeapi import resource_path

        for directory, plural in (
            (workload.PROFILES_DIR, "serversecurityprofiles"),
            (workload.PACKAGES_DIR, "securitypackages"),
        ):
            for path in sorted(directory.glob("*.yaml")):
                for doc in yaml.safe_load_all(path.read_text()):
                    if doc:
                        name = doc["metadata"]["name"]
                        self.api.apply(resource_path(SOD, plural, name=name), doc, "sod-bench")

    def set_verified(self, node: str, profiles: Sequence[str], verified: bool = True) -> None:
        """Write (or remove) the verifier's verdict labels on `node`."""
        from sod_operator.api.constants import VERIFIED, profile_label
        from sod_testbed.kubeapi import resource_path

        labels = {profile_label(p): (VERIFIED if verified else None) for p in profiles}
        self.api.merge_patch(
            resource_path("v1", "nodes", name=node), {"metadata": {"labels": labels}}
        )

    def node_labels(self, node: str) -> dict[str, str]:
        from sod_testbed.kubeapi import resource_path

        obj = self.api.get(resource_path("v1", "nodes", name=node))
        return dict(obj["metadata"].get("labels") or {})

    # ---- namespaces and SecureVMs ------------------------------------------------------

    def namespace(self, name: str) -> str:
        from sod_testbed.kubeapi import resource_path

        self.api.create(
            resource_path("v1", "namespaces"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.cluster.wait_for_service_account(name, timeout=60)
        return name

    def delete_namespace(self, name: str, timeout: float = 120.0) -> None:
        """Delete a namespace and wait until its VMIs are gone (they hold node capacity)."""
        from sod_testbed.kubeapi import resource_path

        self.api.delete(resource_path("v1", "namespaces", name=name))
        deadline = time.monotonic() + timeout
        while self.vmis(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"VMIs of namespace {name} still there after {timeout:.0f} s")
            time.sleep(0.2)

    def securevm_path(self, namespace: str, name: str | None = None) -> str:
        from sod_testbed.kubeapi import resource_path

        return resource_path(SOD, "securevms", namespace=namespace, name=name)

    def create_securevm(
        self,
        namespace: str,
        name: str,
        security: Json,
        memory: str = "1Gi",
        affinity: Json | None = None,
        api: Any = None,
    ) -> Json:
        body = {
            "apiVersion": SOD,
            "kind": "SecureVM",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"security": security, "template": vm_template(name, memory, affinity)},
        }
        return dict((api or self.api).create(self.securevm_path(namespace), body))

    def vmi(self, namespace: str, name: str) -> Json | None:
        from sod_testbed.kubeapi import resource_path

        found: Json | None = self.api.get_or_none(
            resource_path(KUBEVIRT, "virtualmachineinstances", namespace=namespace, name=name)
        )
        return found

    def vmis(self, namespace: str | None = None) -> list[Json]:
        from sod_testbed.kubeapi import resource_path

        return list(
            self.api.list(
                resource_path(KUBEVIRT, "virtualmachineinstances", namespace=namespace)
            ).get("items", [])
        )

    def wait_running(self, namespace: str, names: Sequence[str], timeout: float) -> dict[str, str]:
        """Wait until every named VMI runs; returns name -> node."""
        deadline = time.monotonic() + timeout
        wanted = set(names)
        while True:
            where = {
                v["metadata"]["name"]: v["status"]["nodeName"]
                for v in self.vmis(namespace)
                if v["metadata"]["name"] in wanted
                and (v.get("status") or {}).get("phase") == "Running"
                and (v.get("status") or {}).get("nodeName")
                and not _migrating(v)
            }
            if len(where) == len(wanted):
                return where
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(wanted) - len(where)} of {len(wanted)} VMIs in {namespace} not "
                    f"running after {timeout:.0f} s"
                )
            time.sleep(0.05)

    # ---- the operator ------------------------------------------------------------------

    def start_operator(
        self,
        extra_args: Sequence[str] = (),
        name: str = "operator",
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Run `sod-operator` (or `command`, e.g. another checkout's operator, with `env`);
        with SOD_BENCH_PROFILE=DIR also `py-spy record` on it (collapsed stacks written to
        DIR/<name>.raw when the operator stops)."""
        argv = [
            *(command or [str(Path(sys.executable).parent / "sod-operator")]),
            *operator_args(self.cluster.kubeconfig),
            *extra_args,
        ]
        environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        proc = self.cluster.run_process(name, argv, env=environment)
        self.operator = OperatorProcess(proc)
        profile_dir = os.environ.get("SOD_BENCH_PROFILE")
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if profile_dir and Path(spy).exists():
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            out = Path(profile_dir) / f"{name}.raw"
            self._spy = subprocess.Popen(
                [spy, "record", "--pid", str(self.operator.pid), "--rate", "50",
                 "--format", "raw", "--nonblocking", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def stop_operator(self) -> None:
        spy = self._spy
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
            self._spy = None
        if self.operator is not None:
            self.operator.proc.stop()
            self.operator = None


def operator_args(kubeconfig: Path) -> list[str]:
    """How `sod-operator` is pointed at the sandbox (see sod_operator.main)."""
    return [
        "--kubeconfig", str(kubeconfig), "--no-leader-election",
        "--metrics-port", "0", "--liveness-port", "0",
    ]  # fmt: skip


def _migrating(vmi: Json) -> bool:
    state = (vmi.get("status") or {}).get("migrationState") or {}
    return bool(state.get("startTimestamp")) and not state.get("endTimestamp")


def vm_template(name: str, memory: str = "1Gi", affinity: Json | None = None) -> Json:
    """A KubeVirt VirtualMachineSpec for a SecureVM (what a tenant writes in spec.template)."""
    spec: Json = {
        "runStrategy": "Always",
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "domain": {
                    "cpu": {"cores": 1},
                    "memory": {"guest": memory},
                    "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
                },
                "volumes": [
                    {
                        "name": "rootdisk",
                        "containerDisk": {"image": "quay.io/containerdisks/fedora:41"},
                    }
                ],
            },
        },
    }
    if affinity is not None:
        spec["template"]["spec"]["affinity"] = affinity
    return spec


@contextmanager
def sandbox(nodes: Sequence[Any], player_config: Any, name: str) -> Iterator[Bed]:
    """Start the control plane (real virt-api and virt-controller) with `nodes`, the
    virt-handler player and the catalog; stop it after."""
    from sod_testbed.cluster import LocalCluster
    from sod_testbed.handler_player import HandlerPlayer

    state = Path(tempfile.mkdtemp(prefix=f"sod-bench-{name}-"))
    cluster = LocalCluster(state, nodes, start_timeout=180.0)
    cluster.start()
    player: Any = None
    try:
        handler = logging.FileHandler(cluster.log_dir / "handler-player.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        player_logger = logging.getLogger("sod.handler_player")
        player_logger.addHandler(handler)
        player_logger.setLevel(logging.WARNING)
        player_logger.propagate = False
        player = HandlerPlayer(cluster.kubeconfig, cluster.state_dir, player_config).start()
        bed = Bed(cluster, player)
        bed.install_catalog()
        yield bed
    finally:
        if player is not None:
            player.stop()
        cluster.stop(remove_state=False)
        keep = os.environ.get("SOD_BENCH_KEEP")
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
