"""The synthetic fleet the benchmarks place: the examples' profiles and packages, seeded nodes and
SecureVM requests.

Deterministic (a seeded RNG), so the project's code and a baseline always see the same input.
Requests follow what tenants plausibly ask: mostly one to three options, some packages, some
explicit matrices, every scope, and a fifth of the VMs with a zone constraint of their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sod_operator.api.constants import PROFILE_LABEL_PREFIX, VERIFIED, profile_label
from sod_operator.api.vocabulary import IN_VM_OPTIONS, Entity, Property, Scope, SecurityOption

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "examples" / "profiles"
PACKAGES_DIR = REPO_ROOT / "examples" / "packages"
ZONES = ("zone-a", "zone-b", "zone-c")
ZONE_LABEL = "topology.kubernetes.io/zone"

Json = dict[str, Any]


def _docs(directory: Path, kind: str) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                out[doc["metadata"]["name"]] = doc["spec"]
    return out


def profile_docs() -> dict[str, Json]:
    """ServerSecurityProfile specs of examples/profiles, as raw dicts (name -> spec)."""
    return _docs(PROFILES_DIR, "ServerSecurityProfile")


def package_docs() -> dict[str, Json]:
    """SecurityPackage specs of examples/packages, as raw dicts (name -> spec)."""
    return _docs(PACKAGES_DIR, "SecurityPackage")


@dataclass(frozen=True)
class NodeDoc:
    name: str
    labels: dict[str, str]
    schedulable: bool


@dataclass(frozen=True)
class VMDoc:
    namespace: str
    name: str
    security: Json
    """`spec.security` exactly as a tenant wrote it (camelCase strings)."""
    affinity: Json | None
    """The tenant's own affinity in `spec.template.spec.template.spec.affinity`, if any."""


def _options(rng: random.Random) -> list[str]:
    count = rng.choices((1, 2, 3, 4), weights=(40, 35, 20, 5))[0]
    picked = rng.sample(list(SecurityOption), count)
    if SecurityOption.HYPERVISOR_PROTECTION in picked:
        # Section III-E forbids in-VM protection together with hypervisor protection.
        picked = [o for o in picked if o not in IN_VM_OPTIONS]
    return [str(o) for o in picked]


def _matrix(rng: random.Random) -> list[Json]:
    entities = rng.sample(list(Entity), rng.choice((1, 2, 3)))
    if Entity.HYPERVISOR in entities:
        entities = [e for e in entities if e not in (Entity.GUEST_OS, Entity.OTHER_APPS)]
    rows = []
    for e in entities:
        props = rng.choice(([Property.CONFIDENTIALITY], [Property.INTEGRITY], list(Property)))
        rows.append({"entity": str(e), "properties": [str(p) for p in props]})
    return rows


def security_request(rng: random.Random, packages: list[str]) -> Json:
    kind = rng.choices(("options", "package", "matrix"), weights=(70, 15, 15))[0]
    scope = rng.choices(list(Scope), weights=(50, 15, 10, 15, 10))[0]
    if kind == "package" and packages:
        return {"package": rng.choice(packages)}
    if kind == "matrix":
        return {"matrix": _matrix(rng), "scope": str(scope)}
    out: Json = {"options": _options(rng), "scope": str(scope)}
    if rng.random() < 0.4:
        out["properties"] = [str(rng.choice(list(Property)))]
    return out


def tenant_affinity(rng: random.Random) -> Json | None:
    roll = rng.random()
    if roll < 0.2:
        zones = sorted(rng.sample(ZONES, 2))
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": ZONE_LABEL, "operator": "In", "values": zones}
                            ]
                        }
                    ]
                }
            }
        }
    if roll < 0.3:
        return {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "preference": {
                            "matchExpressions": [
                                {"key": ZONE_LABEL, "operator": "In", "values": [rng.choice(ZONES)]}
                            ]
                        },
                    }
                ]
            }
        }
    return None


def nodes(count: int, profiles: list[str], seed: int = 7) -> list[NodeDoc]:
    """`count` nodes; each verified for zero, one or two profiles, in three zones."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        labels = {
            "kubernetes.io/hostname": f"node-{i:04d}",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            ZONE_LABEL: ZONES[i % len(ZONES)],
            "node.kubernetes.io/instance-type": rng.choice(("m5.large", "m5.xlarge", "c5.2xlarge")),
        }
        roll = rng.random()
        verified = []
        if roll >= 0.1:  # a tenth of the nodes are plain: no verified profile
            verified.append(profiles[i % len(profiles)])
            if roll > 0.75:
                verified.append(rng.choice(profiles))
        for p in verified:
            labels[profile_label(p)] = VERIFIED
        if rng.random() < 0.05:
            # A label the verifier did not (or no longer) vouch for must never count.
            labels[f"{PROFILE_LABEL_PREFIX}{rng.choice(profiles)}"] = "revoked"
        out.append(NodeDoc(f"node-{i:04d}", labels, schedulable=rng.random() >= 0.05))
    return out


def fleet(count: int, packages: list[str], seed: int = 11) -> list[VMDoc]:
    """`count` SecureVMs in 20 namespaces with seeded requests and tenant affinities."""
    rng = random.Random(seed)
    return [
        VMDoc(
            namespace=f"tenant-{i % 20:02d}",
            name=f"vm-{i:05d}",
            security=security_request(rng, packages),
            affinity=tenant_affinity(rng),
        )
        for i in range(count)
    ]
