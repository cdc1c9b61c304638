"""Placement: node affinity from satisfying profiles, merged with the tenant's affinity, and
the node-level semantics (a node qualifies through ONE verified satisfying profile).
"""

from __future__ import annotations

from sod_operator.api.constants import NO_COMPLIANT_NODE_LABEL, VERIFIED, profile_label
from sod_operator.api.vocabulary import Scope
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.placement import (
    NodeView,
    cost_preferences,
    desired_affinity,
    eligible_nodes,
    justifying_profile,
    required_terms,
    tenant_affinity,
    term_matches,
    verified_profiles,
)

HW = profile_label("hyperwall")
DS = profile_label("datasafe")


def node(name: str, *profiles: str, **extra: str) -> NodeView:
    return NodeView(name, {**{profile_label(p): VERIFIED for p in profiles}, **extra})


def test_verified_profiles_come_only_from_verified_labels():
    labels = {HW: VERIFIED, DS: "revoked", "sod.dev/simulated-architecture": "datasafe"}
    assert verified_profiles(labels) == {"hyperwall"}


def test_one_required_term_per_satisfying_profile():
    terms = required_terms(["hyperwall", "h-svm"])
    assert terms == [
        {
            "matchExpressions": [
                {"key": profile_label("h-svm"), "operator": "In", "values": [VERIFIED]}
            ]
        },
        {"matchExpressions": [{"key": HW, "operator": "In", "values": [VERIFIED]}]},
    ]


def test_no_satisfying_profile_admits_no_node():
    terms = required_terms([])
    assert terms == [{"matchExpressions": [{"key": NO_COMPLIANT_NODE_LABEL, "operator": "Exists"}]}]
    assert not any(term_matches(t, {HW: VERIFIED}) for t in terms)


def test_tenant_terms_are_intersected_never_loosened():
    tenant = [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
    terms = required_terms(["hyperwall", "datasafe"], tenant)
    assert len(terms) == 2
    for t in terms:
        assert {"key": "zone", "operator": "In", "values": ["a"]} in t["matchExpressions"]
    assert not any(term_matches(t, {HW: VERIFIED, "zone": "b"}) for t in terms)
    assert any(term_matches(t, {HW: VERIFIED, "zone": "a"}) for t in terms)


def test_desired_affinity_is_idempotent_and_keeps_the_tenants_own():
    tenant = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 5,
                    "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]},
                }
            ],
        },
        "podAntiAffinity": {"x": 1},
    }
    catalog = [
        ProfileCapabilities("hyperwall", {}, Scope.FULL_VM, cost=10),
        ProfileCapabilities("hypersafe", {}, Scope.FULL_VM, cost=2),
    ]
    once = desired_affinity(tenant, ["hyperwall", "hypersafe"], catalog)
    twice = desired_affinity(once, ["hyperwall", "hypersafe"], catalog)
    assert once == twice
    assert tenant_affinity(once) == tenant
    # Changing the satisfying set replaces our terms only.
    narrowed = desired_affinity(once, ["hyperwall"], catalog)
    terms = narrowed["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 1
    assert tenant_affinity(narrowed) == tenant


def test_cost_preferences_steer_to_the_cheapest_sufficient_class():
    catalog = [
        ProfileCapabilities("cheap", {}, Scope.FULL_VM, cost=1),
        ProfileCapabilities("mid", {}, Scope.FULL_VM, cost=5),
        ProfileCapabilities("premium", {}, Scope.FULL_VM, cost=9),
    ]
    prefs = cost_preferences(["cheap", "premium"], catalog)
    weights = {p["preference"]["matchExpressions"][0]["key"]: p["weight"] for p in prefs}
    assert weights == {profile_label("mid"): 50, profile_label("premium"): 100}
    assert all(p["preference"]["matchExpressions"][0]["operator"] == "DoesNotExist" for p in prefs)
    assert cost_preferences(["premium"], catalog) == []


def test_a_node_qualifies_through_one_verified_satisfying_profile():
    nodes = [
        node("hw-1", "hyperwall"),
        node("ds-1", "datasafe"),
        node("both", "hyperwall", "datasafe"),
        node("plain"),
        NodeView("cordoned", {HW: VERIFIED}, schedulable=False),
    ]
    assert eligible_nodes(nodes, ["hyperwall"]) == ["both", "hw-1"]
    assert eligible_nodes(nodes, []) == []


def test_justifying_profile_is_the_cheapest_verified_one():
    n = node("both", "hyperwall", "h-svm")
    assert justifying_profile(n, ["hyperwall", "h-svm"], {"hyperwall": 10, "h-svm": 3}) == "h-svm"
    assert justifying_profile(n, ["datasafe"], {}) is None
