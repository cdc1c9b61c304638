"""Helpers for e2e tests on the local control plane (imported by tests; fixtures in conftest.py).

`Kube` wraps the sandbox's dict-based API client with the few things e2e tests keep doing:
create KubeVirt objects, read them back, and wait for a condition with a readable failure.
Tests never write VMI or VMIM status: real virt-controller does, and the virt-handler player
(`sod_testbed.handler_player`) plays the node side.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sod_operator.api.constants import SIMULATED_ARCHITECTURE_LABEL
from sod_operator.api.v1alpha1.nodeattestation import (
    RENEWALS_CONFIGMAP,
    RENEWALS_KEY,
    TRUST_NAMESPACE,
    RenewalList,
)
from sod_testbed.cluster import LocalCluster
from sod_testbed.handler_player import HandlerPlayer, PlayerConfig
from sod_testbed.kubeapi import JsonObj, KubeApi, resource_path

KUBEVIRT = "kubevirt.io/v1"
T = TypeVar("T")


def sodctl_sandbox(
    state_dir: Path, *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`sodctl sandbox ARGS` through the real entry point, on the sandbox kept in `state_dir`."""
    env = dict(os.environ, SOD_SANDBOX_DIR=str(state_dir))
    return subprocess.run(
        [sys.executable, "-m", "sod_operator.cli.main", "sandbox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def wait_for(
    fetch: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 30.0
) -> T:
    """Poll `fetch` until `done(value)`; on timeout fail showing the last value seen."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {value!r}"
            )
        time.sleep(0.05)
        value = fetch()
    return value


def arch_affinity(*architectures: str, key: str = SIMULATED_ARCHITECTURE_LABEL) -> JsonObj:
    """Required node affinity: one of the simulated architectures."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": key, "operator": "In", "values": list(architectures)}
                        ]
                    }
                ]
            }
        }
    }


def vm_manifest(
    name: str,
    *,
    affinity: JsonObj | None = None,
    node_selector: dict[str, str] | None = None,
    memory: str = "1Gi",
    run_strategy: str = "Always",
    annotations: dict[str, str] | None = None,
    launch_security: JsonObj | None = None,
) -> JsonObj:
    domain: JsonObj = {
        "cpu": {"cores": 1},
        "memory": {"guest": memory},
        "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]},
    }
    if launch_security is not None:
        domain["launchSecurity"] = launch_security
    spec: JsonObj = {
        "domain": domain,
        "volumes": [
            {"name": "rootdisk", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}
        ],
    }
    if affinity is not None:
        spec["affinity"] = affinity
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    template_meta: JsonObj = {"labels": {"app": name}}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": run_strategy,
            "template": {"metadata": template_meta, "spec": spec},
        },
    }


def vmim_manifest(
    name: str,
    vmi_name: str,
    *,
    added_node_selector: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> JsonObj:
    spec: JsonObj = {"vmiName": vmi_name}
    if added_node_selector:
        spec["addedNodeSelector"] = added_node_selector
    meta: JsonObj = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": KUBEVIRT,
        "kind": "VirtualMachineInstanceMigration",
        "metadata": meta,
        "spec": spec,
    }


class Kube:
    """The API of the session's cluster, bound to one test namespace."""

    def __init__(self, api: KubeApi, namespace: str):
        self.api = api
        self.ns = namespace

    def path(self, plural: str, name: str | None = None, api_version: str = KUBEVIRT) -> str:
        return resource_path(api_version, plural, self.ns, name)

    def create(self, plural: str, obj: JsonObj, api_version: str = KUBEVIRT) -> JsonObj:
        return self.api.create(self.path(plural, api_version=api_version), obj)

    def get(self, plural: str, name: str, api_version: str = KUBEVIRT) -> JsonObj | None:
        return self.api.get_or_none(self.path(plural, name, api_version))

    def vm(self, name: str) -> JsonObj | None:
        return self.get("virtualmachines", name)

    def vmi(self, name: str) -> JsonObj | None:
        return self.get("virtualmachineinstances", name)

    def vmim(self, name: str) -> JsonObj | None:
        return self.get("virtualmachineinstancemigrations", name)

    def launcher_pods(self, vmi_name: str | None = None) -> list[JsonObj]:
        selector = "kubevirt.io=virt-launcher"
        if vmi_name:
            selector += f",vm.kubevirt.io/name={vmi_name}"
        pods = self.api.list(self.path("pods", api_version="v1"), selector)["items"]
        # A launcher that exited (the source after a migration) stays as a Succeeded pod.
        return [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def events(self, involved_name: str) -> list[JsonObj]:
        items = self.api.list(self.path("events", api_version="v1"))["items"]
        return [e for e in items if e["involvedObject"]["name"] == involved_name]

    def wait_vmi_phase(self, name: str, phase: str, timeout: float = 30.0) -> JsonObj:
        vmi = wait_for(
            lambda: self.vmi(name),
            lambda v: v is not None and v.get("status", {}).get("phase") == phase,
            f"VMI {self.ns}/{name} phase {phase}",
            timeout,
        )
        assert vmi is not None
        return vmi

    def wait_vmim_final(self, name: str, timeout: float = 60.0) -> JsonObj:
        """The VMIM once finished; when it ran, once virt-controller has also copied the VMI's
        final migrationState into it (a sync after the one that set the final phase)."""
        vmim = wait_for(
            lambda: self.vmim(name),
            lambda m: m is not None and _finished(m),
            f"VMIM {self.ns}/{name} to finish",
            timeout,
        )
        assert vmim is not None
        return vmim

    def wait_vmim_phase(self, name: str, phase: str, timeout: float = 30.0) -> JsonObj:
        vmim = wait_for(
            lambda: self.vmim(name),
            lambda m: m is not None and m.get("status", {}).get("phase") == phase,
            f"VMIM {self.ns}/{name} phase {phase}",
            timeout,
        )
        assert vmim is not None
        return vmim


def _finished(vmim: JsonObj) -> bool:
    status = vmim.get("status") or {}
    if status.get("phase") not in ("Succeeded", "Failed"):
        return False
    ran = "Running" in phases(vmim)
    return not ran or bool((status.get("migrationState") or {}).get("endTimestamp"))


def condition(obj: JsonObj | None, ctype: str) -> JsonObj | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def phases(vmim: JsonObj) -> list[str]:
    return [t["phase"] for t in vmim.get("status", {}).get("phaseTransitionTimestamps", [])]


class PlayerInThread:
    """The session's virt-handler player, logging to the sandbox's log directory; `restart()`
    replaces it with a fresh instance (to prove a restart loses and duplicates nothing)."""

    def __init__(self, cluster: LocalCluster, config: PlayerConfig):
        self.cluster = cluster
        self.config = config
        self.player: HandlerPlayer | None = None
        self._handler = logging.FileHandler(cluster.log_dir / "handler-player.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._logger = logging.getLogger("sod.handler_player")

    def start(self) -> None:
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        self.player = HandlerPlayer(
            self.cluster.kubeconfig, self.cluster.state_dir, self.config
        ).start()

    def stop(self) -> None:
        if self.player is not None:
            self.player.stop()
            self.player = None
        self._logger.removeHandler(self._handler)

    def restart(self) -> None:
        self.stop()
        self.start()


def newest_verified(api: KubeApi, node: str, profile: str) -> datetime | None:
    """When the nonce of the newest evidence the verifier judged good for `profile` on `node`
    was issued: the status verdict's `evidenceTime`, or a later renewal of the same recorded
    evidence in the fleet's renewals ConfigMap (a round that said nothing new is renewed there,
    not written to the status: docs/ATTESTATION.md). None: not verified."""
    natt = api.get_or_none(resource_path("sod.dev/v1alpha1", "nodeattestations", name=node))
    status = (natt or {}).get("status") or {}
    verdict = next((v for v in status.get("verdicts") or [] if v["profile"] == profile), None)
    if not verdict or verdict["result"] != "Verified" or not verdict.get("evidenceTime"):
        return None
    when = datetime.fromisoformat(verdict["evidenceTime"].replace("Z", "+00:00"))
    path = resource_path("v1", "configmaps", TRUST_NAMESPACE, RENEWALS_CONFIGMAP)
    raw = ((api.get_or_none(path) or {}).get("data") or {}).get(RENEWALS_KEY)
    renewal = RenewalList.model_validate_json(raw).renewals.get(node) if raw else None
    content = (status.get("evidence") or {}).get("contentSha256")
    if renewal is not None and renewal.content_sha256 == content:
        return max(when, renewal.evidence_time)
    return when
