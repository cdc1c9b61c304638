"""Placement: which nodes satisfy a request, and the VM node affinity that admits exactly them.

Node affinity is built as KubeVirt copies it to the virt-launcher pod: required terms are ORed,
expressions inside a term ANDed. One term per satisfying profile (no implicit union: a node
qualifies through ONE verified profile), intersected with any terms the tenant wrote, so the
operator never loosens the tenant's own constraints.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sod_operator.api.constants import (
    NO_COMPLIANT_NODE_LABEL,
    PROFILE_LABEL_PREFIX,
    VERIFIED,
    profile_label,
)
from sod_operator.policy.matching import ProfileCapabilities

Json = dict[str, Any]


def verified_profiles(labels: Mapping[str, str]) -> frozenset[str]:
    """Profiles the verifier verified on a node, read from the node's labels."""
    return frozenset(
        key[len(PROFILE_LABEL_PREFIX) :]
        for key, value in labels.items()
        if key.startswith(PROFILE_LABEL_PREFIX) and value == VERIFIED
    )


def _profile_term(profile: str) -> Json:
    return {
        "matchExpressions": [
            {"key": profile_label(profile), "operator": "In", "values": [VERIFIED]}
        ]
    }


def _and_terms(ours: Json, tenant: Json) -> Json:
    term: Json = {
        "matchExpressions": [*tenant.get("matchExpressions", []), *ours["matchExpressions"]]
    }
    if tenant.get("matchFields"):
        term["matchFields"] = list(tenant["matchFields"])
    return term


def required_terms(satisfying: Sequence[str], tenant_terms: Sequence[Json] = ()) -> list[Json]:
    """Required nodeSelectorTerms admitting exactly the nodes with a verified satisfying profile.

    With no satisfying profile, a single term no node can match: the VM waits unscheduled.
    """
    ours = [_profile_term(p) for p in sorted(satisfying)] or [
        {"matchExpressions": [{"key": NO_COMPLIANT_NODE_LABEL, "operator": "Exists"}]}
    ]
    if not tenant_terms:
        return ours
    return [_and_terms(o, t) for t in tenant_terms for o in ours]


def cost_preferences(
    satisfying: Sequence[str], catalog: Iterable[ProfileCapabilities]
) -> list[Json]:
    """Preferred terms steering the VM to the cheapest sufficient class of node.

    Every profile costlier than the cheapest satisfying one gets a `DoesNotExist` preference
    weighted by how much costlier it is, so a node carrying a premium profile scores lower
    than a node that carries only cheap ones.
    """
    profiles = {p.name: p for p in catalog}
    costs = [profiles[s].cost for s in satisfying if s in profiles]
    if not costs:
        return []
    floor = min(costs)
    dearer = sorted((p for p in profiles.values() if p.cost > floor), key=lambda p: p.name)
    if not dearer:
        return []
    top = max(p.cost for p in dearer)
    return [
        {
            "weight": max(1, min(100, round(100 * (p.cost - floor) / (top - floor)))),
            "preference": {
                "matchExpressions": [{"key": profile_label(p.name), "operator": "DoesNotExist"}]
            },
        }
        for p in dearer
    ]


_OUR_KEYS = (PROFILE_LABEL_PREFIX, NO_COMPLIANT_NODE_LABEL)


def _is_ours(expr: Json) -> bool:
    return any(str(expr.get("key", "")).startswith(k) for k in _OUR_KEYS)


def tenant_affinity(affinity: Json | None) -> Json:
    """The affinity without anything the operator added: what the tenant wrote."""
    out = copy.deepcopy(affinity or {})
    node = out.get("nodeAffinity")
    if not node:
        return out
    req = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    if req:
        terms = []
        for term in req.get("nodeSelectorTerms", []):
            exprs = [e for e in term.get("matchExpressions", []) if not _is_ours(e)]
            cleaned = {**term, "matchExpressions": exprs}
            if not exprs:
                cleaned.pop("matchExpressions")
            if cleaned:
                terms.append(cleaned)
        # Our terms were a cross product with the tenant's: de-duplicate what remains.
        unique: list[Json] = []
        for t in terms:
            if t not in unique:
                unique.append(t)
        if unique:
            req["nodeSelectorTerms"] = unique
        else:
            node.pop("requiredDuringSchedulingIgnoredDuringExecution")
    pref = node.get("preferredDuringSchedulingIgnoredDuringExecution")
    if pref is not None:
        kept = [
            p
            for p in pref
            if not all(_is_ours(e) for e in p.get("preference", {}).get("matchExpressions", []))
            or not p.get("preference", {}).get("matchExpressions")
        ]
        if kept:
            node["preferredDuringSchedulingIgnoredDuringExecution"] = kept
        else:
            node.pop("preferredDuringSchedulingIgnoredDuringExecution")
    if not node:
        out.pop("nodeAffinity")
    return out


def tenant_terms(source_affinity: Mapping[str, Any] | None) -> list[Json]:
    """The tenant's own required nodeSelectorTerms (ours removed)."""
    tenant = tenant_affinity(dict(source_affinity) if source_affinity else None)
    terms = (
        tenant.get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    return list(terms)


def desired_affinity(
    current: Json | None,
    satisfying: Sequence[str],
    catalog: Iterable[ProfileCapabilities],
) -> Json:
    """The VM's affinity: the tenant's own, intersected with the satisfying profiles' terms."""
    tenant = tenant_affinity(current)
    node = tenant.setdefault("nodeAffinity", {})
    tenant_req = node.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    node["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": required_terms(satisfying, tenant_req.get("nodeSelectorTerms", []))
    }
    prefs = cost_preferences(satisfying, catalog)
    if prefs or node.get("preferredDuringSchedulingIgnoredDuringExecution"):
        node["preferredDuringSchedulingIgnoredDuringExecution"] = [
            *prefs,
            *node.get("preferredDuringSchedulingIgnoredDuringExecution", []),
        ]
    return tenant


def _expr_matches(expr: Json, labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key", ""), expr.get("operator")
    values = expr.get("values") or []
    present = key in labels
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def term_matches(term: Json, labels: Mapping[str, str], node_name: str = "") -> bool:
    """Whether a nodeSelectorTerm admits a node (the scheduler's semantics)."""
    exprs = term.get("matchExpressions", [])
    fields = term.get("matchFields", [])
    if not exprs and not fields:
        return False  # an empty term matches no node
    ok = all(_expr_matches(e, labels) for e in exprs)
    return ok and all(_expr_matches(f, {"metadata.name": node_name}) for f in fields)


@dataclass(frozen=True)
class NodeView:
    """A node as placement sees it."""

    name: str
    labels: Mapping[str, str]
    schedulable: bool = True
    taints: tuple[Json, ...] = ()
    """`spec.taints` with effect NoSchedule or NoExecute: a pod must tolerate them."""
    expired: frozenset[str] = frozenset()
    """Profiles labelled verified whose verdict has expired unrenewed: void (fail closed,
    `NodeSnapshot.view`); never in `verified`."""

    @cached_property
    def verified(self) -> frozenset[str]:
        # Cached: planning asks this per candidate node, and a node's labels never change in
        # place (a label event builds a new NodeView).
        return verified_profiles(self.labels) - self.expired


HOST_MODEL = "host-model"
# What virt-controller's createTargetPod copies from the source node into the target pod's
# nodeSelector for a host-model VM (KubeVirt v1.9.0, pkg/virt-controller/watch/migration).
_HOST_CPU_PREFIXES = (
    "host-model-cpu.node.kubevirt.io/",
    "host-model-required-features.node.kubevirt.io/",
    "cpu-vendor.node.kubevirt.io/",
)


def migration_cpu_labels(source: NodeView, cpu_model: str) -> dict[str, str]:
    """The labels a live-migration target must carry for this VMI to land there: the source's
    host CPU model, required features and vendor for a host-model VM (an unset model is
    virt-api's default, host-model); nothing for a named model (its own selector says it)."""
    if cpu_model not in ("", HOST_MODEL):
        return {}
    return {k: v for k, v in source.labels.items() if k.startswith(_HOST_CPU_PREFIXES)}


def reachable(target: NodeView, required: Mapping[str, str]) -> bool:
    return all(target.labels.get(k) == v for k, v in required.items())


_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
# Kubernetes' DefaultTolerationSeconds admission gives every pod these (NoExecute, 300 s).
_DEFAULT_TOLERATIONS: tuple[Json, ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
)


def blocking_taints(taints: Iterable[Json]) -> tuple[Json, ...]:
    """The taints the scheduler filters on (PreferNoSchedule only scores)."""
    return tuple(t for t in taints if isinstance(t, dict) and t.get("effect") in _BLOCKING_EFFECTS)


def tolerates(toleration: Json, taint: Json) -> bool:
    """Kubernetes' `Toleration.ToleratesTaint`."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    if (toleration.get("operator") or "Equal") == "Exists":
        return True
    return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")


@dataclass(frozen=True)
class LauncherConstraints:
    """What the scheduler applies to the VM's launcher pod beyond the required affinity: the
    template's `nodeSelector`, and its `tolerations` against the nodes' taints. A node that
    fails them is no target (a migration there would only leave a Pending pod, issue 19)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Json, ...] = ()

    @classmethod
    def from_vmi_spec(cls, spec: Mapping[str, Any] | None) -> LauncherConstraints:
        spec = spec or {}
        selector = spec.get("nodeSelector") or {}
        tolerations = spec.get("tolerations") or []
        return cls(
            {str(k): str(v) for k, v in selector.items()} if isinstance(selector, dict) else {},
            tuple(t for t in tolerations if isinstance(t, dict)),
        )

    @property
    def plain(self) -> bool:
        """No selector and no tolerations: the answer depends on the nodes alone (cacheable)."""
        return not self.node_selector and not self.tolerations

    def admits(self, node: NodeView) -> bool:
        if any(node.labels.get(k) != v for k, v in self.node_selector.items()):
            return False
        allowed = (*self.tolerations, *_DEFAULT_TOLERATIONS)
        return all(any(tolerates(t, taint) for t in allowed) for taint in node.taints)


NO_CONSTRAINTS = LauncherConstraints()


def justifying_profile(
    node: NodeView, satisfying: Sequence[str], costs: Mapping[str, int]
) -> str | None:
    """The cheapest satisfying profile verified on `node`; None when the node is not compliant."""
    on_node = [p for p in satisfying if p in node.verified]
    if not on_node:
        return None
    return min(on_node, key=lambda p: (costs.get(p, 1), p))


def eligible_nodes(
    nodes: Iterable[NodeView],
    satisfying: Sequence[str],
    tenant_terms: Sequence[Json] = (),
    launcher: LauncherConstraints = NO_CONSTRAINTS,
) -> list[str]:
    """Schedulable nodes with a verified satisfying profile that the tenant's terms admit."""
    wanted = frozenset(satisfying)
    out = []
    for node in nodes:
        if not node.schedulable or not (node.verified & wanted) or not launcher.admits(node):
            continue
        if tenant_terms and not any(term_matches(t, node.labels, node.name) for t in tenant_terms):
            continue
        out.append(node.name)
    return sorted(out)
