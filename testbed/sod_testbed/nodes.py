"""The sandbox's fake nodes: parsing `--nodes ARCH=N[:TPM],...` and `--cpu`, the kwok Nodes.

A node named `<arch>-<i>` carries `sod.dev/simulated-architecture=<arch>` (a profile name, or
`plain` for a node with no security architecture), kwok's annotation `kwok.x-k8s.io/node=fake` so
kwok plays its kubelet (heartbeats, leases, pod status), and what a real virt-handler gives a
node, because real virt-controller renders launcher pods that ask for it (KubeVirt v1.9.0):

* device-plugin capacity `devices.kubevirt.io/{kvm,tun,vhost-net}` (1000 each, virt-handler's
  `maxDevices`; pkg/virt-handler/device-manager) and `ephemeral-storage` (the launcher pod
  requests all of them: pkg/virt-controller/services/renderresources.go);
* node-labeller labels (pkg/virt-handler/node-labeller/node_labeller.go `prepareLabels`):
  `kubevirt.io/schedulable=true`, `machine-type.node.kubevirt.io/q35`,
  `cpu-vendor.node.kubevirt.io/<vendor>`, `host-model-cpu.node.kubevirt.io/<model>`, and
  `cpu-model.node.kubevirt.io/<m>` + `cpu-model-migration.node.kubevirt.io/<m>` for the host model
  and the older models of its vendor; a host-model VM's migration target pod must match the
  source's host model and vendor (pkg/virt-controller/watch/migration/migration.go
  `createTargetPod`), so a fleet of two CPUs is partitioned for live migration;
* on confidential architectures the labels `pkg/virt-controller/services/nodeselectorrenderer.go`
  selects on and the device virt-controller requests (`devices.kubevirt.io/sev` or `/tdx`):
  `sev-snp` nodes get `kubevirt.io/sev`, `kubevirt.io/sev-es`, `kubevirt.io/sev-snp`; `tdx`
  nodes `kubevirt.io/tdx`.

The CPU of a node is `intel` (SapphireRapids) by default, `amd` (EPYC-Genoa) on `sev-snp` nodes;
`--cpu ARCH_OR_NODE=amd|intel` changes it, which makes a mixed-CPU fleet. `:ecc` after a count
gives those nodes an ECC-only TPM (P-256 EK) instead of the default RSA one (`swtpm.manufacture`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sod_operator.api.constants import SIMULATED_ARCHITECTURE_LABEL

PLAIN = "plain"
TPM_TYPES = ("rsa", "ecc")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
KUBEVIRT_SCHEDULABLE_LABEL = "kubevirt.io/schedulable"
NODE_LABELLER = "node.kubevirt.io/"


@dataclass(frozen=True)
class Cpu:
    vendor: str  # as libvirt names it, the suffix of cpu-vendor.node.kubevirt.io/
    host_model: str
    older_models: tuple[str, ...]  # models of the same vendor the host can also run


CPUS: dict[str, Cpu] = {
    "intel": Cpu(
        "Intel", "SapphireRapids", ("Icelake-Server", "Cascadelake-Server", "Skylake-Server")
    ),
    "amd": Cpu("AMD", "EPYC-Genoa", ("EPYC-Milan", "EPYC-Rome", "EPYC")),
}
DEFAULT_CPU = "intel"
ARCH_CPU = {"sev-snp": "amd", "tdx": "intel"}
# Confidential-computing node labels and devices (v1 SEVLabel, SEVESLabel, SEVSNPLabel, TDXLabel).
CONFIDENTIAL_LABELS = {
    "sev-snp": ("kubevirt.io/sev", "kubevirt.io/sev-es", "kubevirt.io/sev-snp"),
    "tdx": ("kubevirt.io/tdx",),
}
CONFIDENTIAL_DEVICES = {"sev-snp": "devices.kubevirt.io/sev", "tdx": "devices.kubevirt.io/tdx"}
DEVICE_PLUGINS = (
    "devices.kubevirt.io/kvm",
    "devices.kubevirt.io/tun",
    "devices.kubevirt.io/vhost-net",
)

_ARCH = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class NodeSpecError(ValueError):
    """A `--nodes` or `--label` argument that cannot be used, with the reason."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    architecture: str = PLAIN
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"
    tpm: str = "rsa"
    """The EK of the node's swtpm: `rsa` or `ecc` (P-256)."""
    cpu_kind: str = ""  # a key of CPUS; empty: the architecture's default

    @property
    def cpu_info(self) -> Cpu:
        return CPUS[self.cpu_kind or ARCH_CPU.get(self.architecture, DEFAULT_CPU)]

    def node_labeller_labels(self) -> dict[str, str]:
        """What virt-handler's node-labeller would put on this node."""
        cpu = self.cpu_info
        labels = {
            KUBEVIRT_SCHEDULABLE_LABEL: "true",
            f"machine-type.{NODE_LABELLER}q35": "true",
            f"cpu-vendor.{NODE_LABELLER}{cpu.vendor}": "true",
            f"host-model-cpu.{NODE_LABELLER}{cpu.host_model}": "true",
        }
        for model in (cpu.host_model, *cpu.older_models):
            labels[f"cpu-model.{NODE_LABELLER}{model}"] = "true"
            labels[f"cpu-model-migration.{NODE_LABELLER}{model}"] = "true"
        labels.update({k: "true" for k in CONFIDENTIAL_LABELS.get(self.architecture, ())})
        return labels

    def resources(self) -> dict[str, str]:
        """Capacity (= allocatable): the node's size plus virt-handler's device plugins."""
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        resources["ephemeral-storage"] = "1Ti"
        resources.update({d: "1000" for d in DEVICE_PLUGINS})
        device = CONFIDENTIAL_DEVICES.get(self.architecture)
        if device:
            resources[device] = "64"
        return resources

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            SIMULATED_ARCHITECTURE_LABEL: self.architecture,
            **self.node_labeller_labels(),
        }
        labels.update(self.labels)
        return labels

    def manifest(self) -> dict[str, Any]:
        resources = self.resources()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": self.all_labels(),
                "annotations": {
                    KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {},
            "status": {
                "allocatable": resources,
                "capacity": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                },
            },
        }


def parse_nodes(arg: str) -> list[NodeSpec]:
    """`hyperwall=2,datasafe=1,plain=1` -> hyperwall-1, hyperwall-2, datasafe-1, plain-1.

    `plain=1:ecc` (or `plain:ecc`): those nodes get an ECC TPM.
    """
    specs: list[NodeSpec] = []
    seen: set[str] = set()
    for item in (part.strip() for part in arg.split(",")):
        if not item:
            continue
        body, colon, tpm = item.partition(":")
        tpm = tpm.strip() if colon else "rsa"
        if tpm not in TPM_TYPES:
            raise NodeSpecError(
                f"--nodes: {item!r}: the TPM after ':' must be one of {', '.join(TPM_TYPES)}"
            )
        arch, sep, count_text = body.partition("=")
        arch = arch.strip()
        if not sep:
            count_text = "1"
        if not _ARCH.match(arch):
            raise NodeSpecError(
                f"--nodes: {arch!r} is not an architecture name: use lower-case letters, digits "
                "and '-' (a profile name such as hyperwall, or 'plain')"
            )
        try:
            count = int(count_text)
        except ValueError:
            raise NodeSpecError(
                f"--nodes: {item!r}: the count after '=' must be a whole number"
            ) from None
        if count < 1 or count > 200:
            raise NodeSpecError(f"--nodes: {item!r}: the count must be between 1 and 200")
        if arch in seen:
            raise NodeSpecError(
                f"--nodes: {arch!r} is listed twice; give one count per architecture"
            )
        seen.add(arch)
        specs += [
            NodeSpec(name=f"{arch}-{i}", architecture=arch, tpm=tpm) for i in range(1, count + 1)
        ]
    if not specs:
        raise NodeSpecError("--nodes: give at least one node, e.g. --nodes plain=3")
    return specs


def apply_labels(specs: Sequence[NodeSpec], label_args: Sequence[str]) -> list[NodeSpec]:
    """Apply `NODE:KEY=VALUE` arguments (repeatable `--label`) to the named nodes."""
    by_name = {s.name: dict(s.labels) for s in specs}
    for arg in label_args:
        node, sep, kv = arg.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq:
            raise NodeSpecError(f"--label: {arg!r} is not NODE:KEY=VALUE")
        if node not in by_name:
            raise NodeSpecError(
                f"--label: no node {node!r}; the nodes are {', '.join(sorted(by_name))}"
            )
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise NodeSpecError(f"--label: {key}={value!r} is not a valid Kubernetes label")
        by_name[node][key] = value
    return [dataclasses.replace(s, labels=by_name[s.name]) for s in specs]


def apply_cpus(specs: Sequence[NodeSpec], cpu_args: Sequence[str]) -> list[NodeSpec]:
    """Apply `ARCH_OR_NODE=intel|amd` arguments (repeatable `--cpu`): a node name wins over its
    architecture. Without any, sev-snp nodes are AMD and every other node Intel."""
    by_arch: dict[str, str] = {}
    by_node: dict[str, str] = {}
    names = {s.name for s in specs}
    archs = {s.architecture for s in specs}
    for arg in cpu_args:
        target, sep, kind = arg.partition("=")
        if not sep or kind not in CPUS:
            raise NodeSpecError(f"--cpu: {arg!r} is not ARCH_OR_NODE=({'|'.join(CPUS)})")
        if target in names:
            by_node[target] = kind
        elif target in archs:
            by_arch[target] = kind
        else:
            raise NodeSpecError(f"--cpu: {target!r} is neither a node nor an architecture")
    return [
        dataclasses.replace(s, cpu_kind=by_node.get(s.name, by_arch.get(s.architecture, "")))
        for s in specs
    ]
