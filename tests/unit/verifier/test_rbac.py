"""`sod-verifier manifests` (what the test bed applies) grants the published nonces' ConfigMap
with least privilege: the verifier creates it and reads and updates only it, the node-agents
only read it, both in the verifier's namespace. The chart's copy of the same rules is checked
in tests/chart/test_render.py."""

from __future__ import annotations

from typing import Any

from sod_operator.api.v1alpha1 import nodeattestation
from sod_operator.verifier import rbac

NS = "trust-ns"


def _by_kind_name(namespace: str = NS) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in rbac.manifests(namespace)}


def test_the_published_config_maps_are_the_apis_defaults():
    assert rbac.CHALLENGES_CONFIGMAP == nodeattestation.CHALLENGES_CONFIGMAP
    assert rbac.RENEWALS_CONFIGMAP == nodeattestation.RENEWALS_CONFIGMAP
    assert rbac.DEFAULT_NAMESPACE == nodeattestation.TRUST_NAMESPACE


def test_the_verifier_creates_and_updates_only_the_challenges_and_renewals_config_maps():
    objs = _by_kind_name()
    role = objs[("Role", "sod-verifier-challenges")]
    assert role["metadata"]["namespace"] == NS
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["sod-attestation-challenges", "sod-attestation-renewals"],
         "verbs": ["get", "list", "watch", "update"]},
    ]  # fmt: skip
    binding = objs[("RoleBinding", "sod-verifier-challenges")]
    assert binding["metadata"]["namespace"] == NS
    assert binding["roleRef"] == {
        "apiGroup": rbac.RBAC_GROUP, "kind": "Role", "name": "sod-verifier-challenges",
    }  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sod-verifier",
                                    "namespace": NS}]  # fmt: skip


def test_the_agents_only_read_the_challenges_config_map_in_the_verifiers_namespace():
    objs = _by_kind_name()
    role = objs[("Role", "sod-node-agent-challenges")]
    assert role["metadata"]["namespace"] == NS
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["sod-attestation-challenges"], "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    binding = objs[("RoleBinding", "sod-node-agent-challenges")]
    assert binding["metadata"]["namespace"] == NS
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sod-node-agent",
                                    "namespace": NS}]  # fmt: skip


def test_no_identity_may_patch_or_delete_config_maps_nor_read_any_but_the_published():
    for m in rbac.manifests(NS):
        for rule in m.get("rules") or []:
            if "configmaps" not in rule["resources"]:
                continue
            assert m["kind"] == "Role", f"{m['metadata']['name']}: ConfigMaps cluster-wide"
            assert not {"patch", "delete", "deletecollection", "*"} & set(rule["verbs"]), rule
            if set(rule["verbs"]) - {"create"}:
                published = {rbac.CHALLENGES_CONFIGMAP, rbac.RENEWALS_CONFIGMAP}
                assert set(rule["resourceNames"]) <= published, rule


def test_every_config_map_rule_says_why():
    for role in (rbac.VERIFIER_CHALLENGES_ROLE, rbac.AGENT_CHALLENGES_ROLE):
        assert role.why
        assert all(rule.why for rule in role.rules), role.component


def test_the_rendered_yaml_holds_every_role_in_the_given_namespace():
    text = rbac.render("other-ns")
    assert "sod-node-agent-challenges" in text
    namespaced = [m for m in rbac.manifests("other-ns") if m["kind"] in ("Role", "RoleBinding")]
    assert sorted(m["metadata"]["name"] for m in namespaced) == sorted(
        [f"sod-verifier{rbac.LEASE_SUFFIX}"] * 2 + ["sod-verifier-challenges"] * 2
        + ["sod-node-agent-challenges"] * 2
    )  # fmt: skip
    assert {m["metadata"]["namespace"] for m in namespaced} == {"other-ns"}
