"""Why a SecureVM is where it is: per node, whether it qualifies and, if not, what it lacks.

The answer behind `sodctl explain svm NAME`: the same semantics the operator places by (one
verified profile must satisfy the request; the tenant's own affinity also applies; a cordoned
node takes no new VMs), stated per node so a tenant whose VM is Pending sees what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sod_operator.policy.evaluation import Resolution
from sod_operator.policy.matching import ProfileCapabilities, match
from sod_operator.policy.placement import NodeView, tenant_affinity, term_matches


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    qualifies: bool
    via: str | None = None
    """The cheapest verified satisfying profile (what would justify the VM there)."""
    verified: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()
    """Human reasons, one per obstacle: a profile's unmet cells, the tenant's affinity, ..."""
    runs_vm: bool = False


@dataclass(frozen=True)
class Explanation:
    resolution: Resolution
    nodes: tuple[NodeVerdict, ...] = field(default_factory=tuple)
    vm_node: str | None = None

    @property
    def qualifying(self) -> list[str]:
        return [v.node for v in self.nodes if v.qualifies]


def tenant_terms(source_affinity: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    tenant = tenant_affinity(dict(source_affinity) if source_affinity else None)
    terms = (
        tenant.get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    return list(terms)


def explain(
    resolution: Resolution,
    catalog: Mapping[str, ProfileCapabilities],
    nodes: Iterable[NodeView],
    *,
    terms: Sequence[Mapping[str, Any]] = (),
    vm_node: str | None = None,
) -> Explanation:
    """Per node: qualifies (via which profile) or the reasons it does not."""
    satisfying = set(resolution.satisfying)
    verdicts = []
    for node in sorted(nodes, key=lambda n: n.name):
        verified = tuple(sorted(node.verified))
        via_candidates = sorted(
            (p for p in verified if p in satisfying),
            key=lambda p: (catalog[p].cost if p in catalog else 1, p),
        )
        lacks: list[str] = []
        if not verified:
            lacks.append("no verified profile (the verifier has verified nothing on this node)")
        elif not via_candidates and resolution.request is not None:
            for p in verified:
                caps = catalog.get(p)
                if caps is None:
                    lacks.append(f"{p}: verified, but no ServerSecurityProfile of that name exists")
                    continue
                reasons = match(resolution.request, caps).reasons(resolution.request.scope)
                lacks.append(f"{p}: " + "; ".join(reasons))
        if terms and not any(term_matches(dict(t), node.labels, node.name) for t in terms):
            lacks.append("excluded by the VM's own node affinity")
        if not node.schedulable:
            lacks.append("cordoned (unschedulable)")
        verdicts.append(
            NodeVerdict(
                node=node.name,
                qualifies=bool(via_candidates) and not lacks,
                via=via_candidates[0] if via_candidates else None,
                verified=verified,
                lacks=tuple(lacks),
                runs_vm=node.name == vm_node,
            )
        )
    return Explanation(resolution=resolution, nodes=tuple(verdicts), vm_node=vm_node)
