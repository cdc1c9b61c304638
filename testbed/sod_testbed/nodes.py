"""The sandbox's fake nodes: parsing `--nodes ARCH=N[:TPM],...` and the kwok Node objects.

A node named `<arch>-<i>` carries `sod.dev/simulated-architecture=<arch>` (a profile name, or
`plain` for a node with no security architecture), the labels KubeVirt's virt-handler puts on a
schedulable node (`kubevirt.io/schedulable=true`) and kwok's annotation `kwok.x-k8s.io/node=fake`
so kwok plays its kubelet (heartbeats, leases, pod status). `:ecc` after a count gives those
nodes an ECC-only TPM (P-256 EK) instead of the default RSA one (`swtpm.manufacture`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sod_operator.api.constants import SIMULATED_ARCHITECTURE_LABEL

PLAIN = "plain"
TPM_TYPES = ("rsa", "ecc")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
KUBEVIRT_SCHEDULABLE_LABEL = "kubevirt.io/schedulable"

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

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            KUBEVIRT_SCHEDULABLE_LABEL: "true",
            SIMULATED_ARCHITECTURE_LABEL: self.architecture,
        }
        labels.update(self.labels)
        return labels

    def manifest(self) -> dict[str, Any]:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
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
    return [replace(s, labels=by_name[s.name]) for s in specs]
