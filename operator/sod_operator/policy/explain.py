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
from sod_operator.policy.placement import (
    NodeView,
    justifying_profile,
    tenant_terms,
    term_matches,
)

__all__ = ["Explanation", "NodeVerdict", "explain", "tenant_terms"]


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


def explain(
    resolution: Resolution,
    catalog: Mapping[str, ProfileCapabilities],
    nodes: Iterable[NodeView],
    *,
    terms: Sequence[Mapping[str, Any]] = (),
    vm_node: str | None = None,
) -> Explanation:
    """Per node: qualifies (via which profile) or the reasons it does not."""
    costs = {name: p.cost for name, p in catalog.items()}
    verdicts = []
    for node in sorted(nodes, key=lambda n: n.name):
        via = justifying_profile(node, resolution.satisfying, costs)
        lacks = _lacks(resolution, catalog, node, via)
        if terms and not any(term_matches(dict(t), node.labels, node.name) for t in terms):
            lacks.append("excluded by the VM's own node affinity")
        if not node.schedulable:
            lacks.append("cordoned (unschedulable)")
        verdicts.append(
            NodeVerdict(
                node=node.name,
                qualifies=via is not None and not lacks,
                via=via,
                verified=tuple(sorted(node.verified)),
                lacks=tuple(lacks),
                runs_vm=node.name == vm_node,
            )
        )
    return Explanation(resolution=resolution, nodes=tuple(verdicts), vm_node=vm_node)


def _lacks(
    resolution: Resolution,
    catalog: Mapping[str, ProfileCapabilities],
    node: NodeView,
    via: str | None,
) -> list[str]:
    """What the node's verified profiles lack for the request (nothing when one satisfies it)."""
    if not node.verified:
        return ["no verified profile (the verifier has verified nothing on this node)"]
    request = resolution.request
    if via is not None or request is None:
        return []
    lacks = []
    for p in sorted(node.verified):
        caps = catalog.get(p)
        if caps is None:
            lacks.append(f"{p}: verified, but no ServerSecurityProfile of that name exists")
        else:
            lacks.append(f"{p}: " + "; ".join(match(request, caps).reasons(request.scope)))
    return lacks
