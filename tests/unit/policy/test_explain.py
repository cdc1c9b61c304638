"""`policy.explain`: per node, qualifies (via the cheapest verified satisfying profile) or the
reasons it does not (a profile's unmet cells, no verified profile, the tenant's affinity,
cordoned). Not covered: fetching from a cluster (`sodctl explain`, tests/e2e)."""

from __future__ import annotations

from sod_operator.policy.explain import explain, tenant_terms
from sod_operator.policy.placement import NodeView

from tests.unit.policy.scenario import NS, VM_B, Scenario, node_labels


def setup() -> tuple[Scenario, dict]:
    s = Scenario().profiles("hyperwall", "nohype", "sev-snp")
    s.securevm("vm", VM_B)
    return s, s.world.profiles


def test_each_node_says_why():
    s, catalog = setup()
    nodes = [
        NodeView("hw", node_labels("hyperwall", "sev-snp")),
        NodeView("nh", node_labels("nohype")),
        NodeView("bare", {}),
        NodeView("cordoned", node_labels("hyperwall"), schedulable=False),
    ]
    ex = explain(s.world.resolution((NS, "vm")), catalog, nodes, vm_node="hw")
    by = {v.node: v for v in ex.nodes}
    assert by["hw"].qualifies
    assert by["hw"].via == "sev-snp"
    assert by["hw"].runs_vm
    assert by["nh"].lacks == (
        "nohype: Hypervisor Confidentiality: profile offers No; "
        "Hypervisor Integrity: profile offers No",
    )
    assert "no verified profile" in by["bare"].lacks[0]
    assert by["cordoned"].lacks == ("cordoned (unschedulable)",)
    assert ex.qualifying == ["hw"]


def test_tenant_affinity_is_a_reason_too():
    s, catalog = setup()
    zone = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    nodes = [NodeView("hw", node_labels("hyperwall"))]
    ex = explain(s.world.resolution((NS, "vm")), catalog, nodes, terms=tenant_terms(zone))
    assert ex.nodes[0].lacks == ("excluded by the VM's own node affinity",)
