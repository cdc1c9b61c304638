"""Run `sod-operator` in e2e tests the way users do (its console script, in a subprocess), and
set node trust the way the verifier does.

`OperatorProcess` starts the operator for one test namespace with fast relocation tunables and
a short Lease (so a killed operator's successor takes over quickly); `kill()` is SIGKILL, the
harshest restart. `Trust` writes the verifier's node labels (`profile_label(p)=verified`) with
the same keys the verifier uses; when the e2e tier runs the real verifier, only `Trust` changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from sod_operator.api.constants import PROFILE_LABEL_PREFIX, VERIFIED, profile_label
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path

ROOT = Path(__file__).resolve().parents[2]
SOD = "sod.dev/v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_command() -> list[str]:
    script = Path(sys.executable).with_name("sod-operator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sod_operator.main"]


class OperatorProcess:
    """`sod-operator` watching one namespace, logging to `log_path`."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, *extra: str):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra = list(extra)
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [
            *operator_command(),
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--bind-address", "127.0.0.1",
            "--metrics-port", str(self.metrics_port),
            "--liveness-port", str(self.liveness_port),
            "--lease-namespace", self.namespace,
            "--identity", "e2e-operator",
            "--lease-seconds", "3", "--renew-seconds", "2", "--retry-seconds", "0.5",
            "--retry-base-seconds", "2", "--retry-max-seconds", "8",
            "--node-cooldown-seconds", "0",
            *self.extra,
        ]  # fmt: skip

    def spawn(self) -> OperatorProcess:
        """Start the process without waiting (a standby replica never becomes healthy)."""
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        """Start and wait until it leads and serves /healthz."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sod-operator exited with {self.proc.returncode}:\n{self.log()}"
                )
            if self._healthy():
                return self
            time.sleep(0.1)
        raise AssertionError(f"sod-operator not healthy after {timeout:.0f}s:\n{self.log()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no Lease release."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def stopped_afterwards(op: OperatorProcess) -> Iterator[OperatorProcess]:
    """A fixture's body: yield `op`, then stop it and print its log's tail (pytest shows it
    with a failed test)."""
    try:
        yield op
    finally:
        op.stop()
        print(f"--- sod-operator log (tail) ---\n{op.log(4000)}")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """One sample of a Prometheus text exposition, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == want:
            return float(value)
    return None


class Trust:
    """The verifier's node labels, written directly (until the e2e tier runs the verifier)."""

    def __init__(self, api: KubeApi):
        self.api = api

    def set(self, node: str, *profiles: str) -> float:
        """Make exactly `profiles` verified on `node`; returns the monotonic time of the write."""
        current = self.api.get(resource_path("v1", "nodes", name=node))["metadata"].get(
            "labels", {}
        )
        labels: dict[str, Any] = {k: None for k in current if k.startswith(PROFILE_LABEL_PREFIX)}
        labels.update({profile_label(p): VERIFIED for p in profiles})
        self.api.merge_patch(
            resource_path("v1", "nodes", name=node), {"metadata": {"labels": labels}}
        )
        return time.monotonic()

    def baseline(self, assignment: Mapping[str, Iterable[str]]) -> None:
        """Every node of the bed gets exactly the profiles in `assignment` (others: none); the
        beds differ in their nodes, so they are listed, not assumed."""
        for item in self.api.list(resource_path("v1", "nodes"))["items"]:
            node = item["metadata"]["name"]
            self.set(node, *assignment.get(node, ()))


def install_catalog(api: KubeApi) -> None:
    """The examples' profiles and packages (cluster-scoped, shared by the session's tests)."""
    for sub, plural in (("profiles", "serversecurityprofiles"), ("packages", "securitypackages")):
        for path in sorted((ROOT / "examples" / sub).glob("*.yaml")):
            obj = yaml.safe_load(path.read_text())
            api.apply(resource_path(SOD, plural, name=obj["metadata"]["name"]), obj, "sod-e2e")


def remove_catalog(api: KubeApi) -> None:
    for sub, plural in (("profiles", "serversecurityprofiles"), ("packages", "securitypackages")):
        for path in sorted((ROOT / "examples" / sub).glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            delete_quietly(api, resource_path(SOD, plural, name=name))


def securevm(name: str, security: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A SecureVM like the examples' VM-A/VM-B (a 1 GiB VM from a container disk)."""
    example = yaml.safe_load((ROOT / "examples" / "securevm-vm-a.yaml").read_text())
    body: dict[str, Any] = {
        "apiVersion": SOD,
        "kind": "SecureVM",
        "metadata": {"name": name},
        "spec": {"security": security, "template": example["spec"]["template"], **spec},
    }
    return body


def delete_quietly(api: KubeApi, path: str) -> None:
    with contextlib.suppress(ApiError):
        api.delete(path)
