"""`helm lint --strict` and `helm template` of the chart, with the defaults and with every values
file in tests/chart/values/, and the properties of what is rendered: standard labels, one object
per template, the hardened pod specs, and the least-privilege RBAC split (only the verifier may
write nodes; the node-agent writes only NodeAttestations, never deletes, never status).

Not covered here: whether the apiserver accepts the objects (server-side dry-run, install,
upgrade and the admission policy in action are in tests/e2e/test_chart*.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_SUFFIX

from tests.chart.helmcli import (
    CHART,
    VALUES_DIR,
    Helm,
    Rendered,
    parse_rendered,
    variant_ids,
    variant_paths,
)

NAMESPACE = "sod-system"
# The ConfigMap of the verifier's published nonces, as the chart names it for release `sod`.
CHALLENGES = "sod-sod-operator-attestation-challenges"
# The ConfigMap of the verifier's fleet renewals of verdict expiries, which the operator reads.
RENEWALS = "sod-sod-operator-attestation-renewals"
NAMESPACED_KINDS = {
    "ServiceAccount", "Role", "RoleBinding", "Deployment", "DaemonSet", "Service",
    "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "ConfigMap",
}  # fmt: skip
STANDARD_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
}

variants = pytest.mark.parametrize("values", variant_paths(), ids=variant_ids())


def render(helm: Helm, values: Path | None, *extra: str) -> list[Rendered]:
    return parse_rendered(helm.template(values, *extra, namespace=NAMESPACE))


def by_kind(objs: Iterable[Rendered], kind: str) -> list[dict[str, Any]]:
    return [o.obj for o in objs if o.kind == kind]


def rules_granting(objs: list[Rendered], group: str, resource: str, verb: str) -> list[str]:
    """Names of the ClusterRoles/Roles with a rule that grants `verb` on `group`/`resource`."""
    out = []
    for o in objs:
        if o.kind not in ("ClusterRole", "Role"):
            continue
        for rule in o.obj.get("rules") or []:
            if (
                group in rule.get("apiGroups", [])
                and resource in rule.get("resources", [])
                and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            ):
                out.append(o.name)
    return out


# --- helm lint / template ----------------------------------------------------------------------


@variants
def test_helm_lint_strict_passes(helm: Helm, values: Path | None):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    proc = helm.run(*args)
    assert "0 chart(s) failed" in proc.stdout


@variants
def test_every_object_has_the_standard_labels_and_its_namespace(helm: Helm, values: Path | None):
    objs = render(helm, values)
    assert objs, "the chart rendered nothing"
    for o in objs:
        labels = o.obj["metadata"].get("labels") or {}
        missing = STANDARD_LABELS - labels.keys()
        assert not missing, f"{o} lacks labels {sorted(missing)}"
        if o.kind in NAMESPACED_KINDS and o.kind not in ("ServiceMonitor", "PrometheusRule"):
            assert o.obj["metadata"].get("namespace") == NAMESPACE, f"{o} is not namespaced"
        elif o.kind not in NAMESPACED_KINDS:
            assert "namespace" not in o.obj["metadata"], f"{o} is cluster-scoped"
        assert len(o.name) <= 63, f"{o}: name longer than 63 characters"


@variants
def test_one_object_per_template_file(helm: Helm, values: Path | None):
    sources = [o.source for o in render(helm, values)]
    duplicated = {s for s in sources if sources.count(s) > 1}
    assert not duplicated, f"templates rendering more than one object: {sorted(duplicated)}"


def test_template_files_are_dashed_and_every_non_helper_template_renders(helm: Helm):
    rendered = {o.source.rsplit("/", 1)[-1] for o in render(helm, None)}
    rendered |= {o.source.rsplit("/", 1)[-1] for o in render(helm, VALUES_DIR / "production.yaml")}
    templates = {p.name for p in (CHART / "templates").glob("*.yaml")}
    assert all(name == name.lower() and "_" not in name for name in templates), templates
    assert templates - rendered == set(), "templates that no tested values file renders"


def test_defaults_render_the_three_components_and_the_crds(helm: Helm):
    objs = render(helm, None)
    kinds = {(o.kind, o.name) for o in objs}
    assert ("Deployment", "sod-sod-operator-operator") in kinds
    assert ("Deployment", "sod-sod-operator-verifier") in kinds
    assert ("DaemonSet", "sod-sod-operator-node-agent") in kinds
    crds = {o.name for o in objs if o.kind == "CustomResourceDefinition"}
    assert crds == {
        "securevms.sod.dev",
        "serversecurityprofiles.sod.dev",
        "securitypackages.sod.dev",
        "nodeattestations.sod.dev",
        "platformenrollments.sod.dev",
    }
    for crd in by_kind(objs, "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    sas = {o.name for o in objs if o.kind == "ServiceAccount"}
    assert len(sas) == 3, "operator, verifier and node-agent each have their own ServiceAccount"


def test_crds_can_be_left_out_or_unprotected(helm: Helm):
    assert not by_kind(
        render(helm, None, "--set", "crds.enabled=false"), "CustomResourceDefinition"
    )
    for crd in by_kind(render(helm, None, "--set", "crds.keep=false"), "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


# --- pods --------------------------------------------------------------------------------------


@variants
def test_operator_and_verifier_pods_are_hardened(helm: Helm, values: Path | None):
    for dep in by_kind(render(helm, values), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        name = dep["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["serviceAccountName"].endswith(("-operator", "-verifier", "-sa", "controller"))
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert "privileged" not in sc, name


def _deployment(objs: list[Rendered], suffix: str) -> dict[str, Any]:
    (dep,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"].endswith(suffix)]
    return dep


def test_default_operator_has_two_leader_elected_replicas_probes_and_requests(helm: Helm):
    objs = render(helm, None)
    dep = _deployment(objs, "-operator")
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"], "rolling updates: standbys take over"
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--lease-name=sod-sod-operator-operator" in container["args"]
    assert f"--lease-namespace={NAMESPACE}" in container["args"]
    # kopf serves only /healthz, and only on the leader: standbys are unready, not restarted
    # (see the report on the liveness of standbys).
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 9090}
    pdbs = {o.name: o.obj for o in objs if o.kind == "PodDisruptionBudget"}
    assert pdbs["sod-sod-operator-operator"]["spec"]["minAvailable"] == 1


def test_default_verifier_has_two_leader_elected_replicas_probed_on_its_metrics_port(
    helm: Helm,
):
    objs = render(helm, None)
    dep = _deployment(objs, "-verifier")
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"], "rolling updates: standbys take over"
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["sod-verifier"]
    assert container["args"][0] == "run"
    assert "--lease-name=sod-sod-operator-verifier" in container["args"]
    assert f"--lease-namespace={NAMESPACE}" in container["args"]
    # The fleet's nonces, in the release namespace (the lease namespace) under the chart's name.
    assert "--challenges=sod-sod-operator-attestation-challenges" in container["args"]
    assert "--challenge-interval=10" in container["args"]
    # The fleet's expiry renewals, beside them; the operator reads this one.
    assert "--renewals=sod-sod-operator-attestation-renewals" in container["args"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    pdbs = {o.name: o.obj for o in objs if o.kind == "PodDisruptionBudget"}
    assert pdbs["sod-sod-operator-verifier"]["spec"]["minAvailable"] == 1
    roles = {o.name: o.obj for o in objs if o.kind == "Role"}
    lease_rules = roles["sod-sod-operator-verifier-leader-election"]["rules"]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["sod-sod-operator-verifier"], "verbs": ["get", "update"]} in (
        lease_rules
    )  # fmt: skip
    assert "--metrics-address=0.0.0.0" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    (bundle,) = [v for v in pod["volumes"] if v["name"] == "ek-ca-bundle"]
    assert bundle["configMap"]["name"] == "sod-sod-operator-ek-ca-bundle"
    assert not by_kind(objs, "ConfigMap"), "no bundle given: the ConfigMap is the user's"


def test_verifier_ek_ca_bundle_from_values_or_an_existing_config_map(helm: Helm):
    objs = render(helm, VALUES_DIR / "production.yaml")
    (cm,) = by_kind(objs, "ConfigMap")
    assert cm["metadata"]["name"] == "sod-ek-ca-bundle"
    assert cm["data"]["ek-ca-bundle.pem"].startswith("-----BEGIN CERTIFICATE-----\n")
    assert cm["data"]["ek-ca-bundle.pem"].endswith("-----END CERTIFICATE-----\n")
    objs = render(helm, VALUES_DIR / "external-identities.yaml")
    assert not by_kind(objs, "ConfigMap")
    pod = _deployment(objs, "-verifier")["spec"]["template"]["spec"]
    (bundle,) = [v for v in pod["volumes"] if v["name"] == "ek-ca-bundle"]
    assert bundle["configMap"]["name"] == "tpm-vendor-ek-cas"


def test_verifier_replicas_without_leader_election_are_refused(helm: Helm):
    proc = helm.run(
        "template", "sod", str(CHART), "--set", "verifier.leaderElection.enabled=false", check=False
    )
    assert proc.returncode != 0
    assert "verifier.replicaCount is 2 but verifier.leaderElection.enabled is false" in proc.stderr


def test_one_verifier_without_leader_election_is_recreated_not_overlapped(helm: Helm):
    objs = render(
        helm, None, "--set", "verifier.leaderElection.enabled=false",
        "--set", "verifier.replicaCount=1",
    )  # fmt: skip
    dep = _deployment(objs, "-verifier")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "never two verifiers at once"
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-leader-election" in args
    assert not any(o.name.endswith("-verifier-leader-election") for o in objs)
    # Without a Lease the verifier still publishes nonces in the release namespace.
    assert f"--lease-namespace={NAMESPACE}" in args
    assert "--challenges=sod-sod-operator-attestation-challenges" in args
    assert any(o.kind == "Role" and o.name.endswith("-verifier-challenges") for o in objs)


def test_several_replicas_without_leader_election_are_refused(helm: Helm):
    proc = helm.run(
        "template", "sod", str(CHART), "--set", "operator.leaderElection.enabled=false", check=False
    )
    assert proc.returncode != 0
    assert "operator.replicaCount is 2 but operator.leaderElection.enabled is false" in proc.stderr


def test_a_misspelt_value_is_refused_by_the_schema(helm: Helm):
    proc = helm.run(
        "template", "sod", str(CHART), "--set", "nodeAgent.tpmDevice=/dev/tpm0", check=False
    )
    assert proc.returncode != 0
    assert "additional properties 'tpmDevice' not allowed" in proc.stderr


def test_single_operator_without_leader_election_is_recreated_not_overlapped(helm: Helm):
    objs = render(helm, VALUES_DIR / "minimal.yaml")
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-leader-election" in args
    assert "--metrics-port=0" in args, "metrics.enabled=false"
    # No leader election, no Lease role. The operator still reads the renewals (none without a
    # verifier: status expiries alone count); without the Role it would never start planning.
    roles = [o["metadata"]["name"] for o in by_kind(objs, "Role")]
    assert roles == ["sod-sod-operator-operator-renewals"]
    assert not by_kind(objs, "PodDisruptionBudget")


def test_node_agent_gets_the_tpm_device_and_its_node_name(helm: Helm):
    (ds,) = by_kind(render(helm, None), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # The verifier's published nonces: the chart's ConfigMap in the release namespace.
    assert env["SOD_NAMESPACE"] == {"name": "SOD_NAMESPACE", "value": NAMESPACE}
    assert env["SOD_CHALLENGES_CONFIGMAP"] == {
        "name": "SOD_CHALLENGES_CONFIGMAP",
        "value": "sod-sod-operator-attestation-challenges",
    }
    assert container["args"][:5] == [
        "--node=$(NODE_NAME)",
        "--tcti=device:/dev/tpmrm0",
        "--pcrs=sha256:0-7",
        "--interval=10",
        "--log-level=INFO",
    ]
    assert {"name": "tpm", "hostPath": {"path": "/dev/tpmrm0", "type": "CharDevice"}} in pod[
        "volumes"
    ]
    assert {"name": "tpm", "mountPath": "/dev/tpmrm0"} in container["volumeMounts"]
    assert container["securityContext"]["privileged"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_node_agent_with_a_device_plugin_is_unprivileged_and_non_root(helm: Helm):
    objs = render(helm, VALUES_DIR / "production.yaml")
    (ds,) = by_kind(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert "privileged" not in sc
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["supplementalGroups"] == [59]
    assert container["resources"]["limits"]["squat.ai/tpmrm"] == "1"
    assert container["resources"]["requests"]["squat.ai/tpmrm"] == "1"
    assert container["resources"]["requests"]["cpu"] == "10m", "the defaults are kept"
    assert all(v["name"] != "tpm" for v in pod["volumes"])
    # Helm merges a values map with the default one.
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "kubevirt.io/schedulable": "true"}


def test_images_use_app_version_tag_or_digest(helm: Helm):
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for kind in ("Deployment", "DaemonSet")
        for d in by_kind(render(helm, None), kind)
    }
    assert images == {
        "sod-sod-operator-operator": "ghcr.io/sod-operator/sod-operator:0.1.0",
        "sod-sod-operator-verifier": "ghcr.io/sod-operator/sod-operator:0.1.0",
        "sod-sod-operator-node-agent": "ghcr.io/sod-operator/sod-node-agent:0.1.0",
    }
    objs = render(helm, VALUES_DIR / "production.yaml")
    (op,) = [d for d in by_kind(objs, "Deployment") if d["metadata"]["name"] == "sod-operator"]
    assert op["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/sod/sod-operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert op["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


# --- RBAC --------------------------------------------------------------------------------------


@variants
def test_only_the_verifier_may_write_nodes(helm: Helm, values: Path | None):
    objs = render(helm, values)
    for verb in ("patch", "update", "create", "delete"):
        writers = rules_granting(objs, "", "nodes", verb)
        assert all(w.endswith("-verifier") for w in writers), (verb, writers)
    if any(o.kind == "ClusterRole" and o.name.endswith("-verifier") for o in objs):
        assert rules_granting(objs, "", "nodes", "patch")


def _role(objs: list[Rendered], suffix: str) -> list[dict[str, Any]]:
    (role,) = [o.obj for o in objs if o.kind == "ClusterRole" and o.name.endswith(suffix)]
    return list(role["rules"])


def test_node_agent_may_only_read_create_and_update_node_attestations(helm: Helm):
    rules = _role(render(helm, None), "-node-agent")
    assert rules == [
        {
            "apiGroups": ["sod.dev"],
            "resources": ["nodeattestations"],
            # list/watch: the agent watches its own object by a metadata.name field selector.
            "verbs": ["get", "list", "watch", "create", "patch", "update"],
        }
    ]


def test_operator_role_is_the_briefs(helm: Helm):
    objs = render(helm, None)
    granted = {
        (group, resource, verb)
        for rule in _role(objs, "-operator")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {
        *(("sod.dev", "securevms", v) for v in ("get", "list", "watch")),
        ("sod.dev", "securevms/status", "patch"),
        *(("sod.dev", r, v) for r in ("serversecurityprofiles", "securitypackages")
          for v in ("get", "list", "watch")),
        ("sod.dev", "serversecurityprofiles/status", "patch"),
        *(("", "nodes", v) for v in ("get", "list", "watch")),
        *(("", "pods", v) for v in ("get", "list", "watch")),  # virt-launcher pods (issue 19)
        # verdict expiry: a label outliving its verdict is void (issue 17)
        *(("sod.dev", "nodeattestations", v) for v in ("get", "list", "watch")),
        *(("kubevirt.io", "virtualmachines", v)
          for v in ("get", "list", "watch", "create", "patch")),
        *(("kubevirt.io", "virtualmachineinstances", v)
          for v in ("get", "list", "watch", "delete")),
        *(("kubevirt.io", "virtualmachineinstancemigrations", v)
          for v in ("get", "list", "watch", "create")),
        *(("apiextensions.k8s.io", "customresourcedefinitions", v)
          for v in ("get", "list", "watch")),
        ("", "events", "create"),
    }  # fmt: skip
    assert granted == expected


def test_verifier_role_is_the_briefs(helm: Helm):
    rules = _role(render(helm, None), "-verifier")
    granted = {
        (g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
        for v in rule["verbs"]
    }  # fmt: skip
    assert granted == {
        *(("", "nodes", v) for v in ("get", "list", "watch", "patch")),
        *(("sod.dev", "nodeattestations", v) for v in ("get", "list", "watch")),
        *(("sod.dev", "nodeattestations/status", v) for v in ("get", "patch", "update")),
        *(("sod.dev", "serversecurityprofiles", v) for v in ("get", "list", "watch")),
        *(("sod.dev", "platformenrollments", v) for v in ("get", "list", "watch")),
        *(("", "events", v) for v in ("create", "patch")),
    }


def test_no_role_of_the_chart_may_write_platform_enrollments(helm: Helm):
    """Which architecture a machine's EK is enrolled for is the platform team's word alone:
    no identity the chart creates (node-agent, verifier, operator, tenant roles) may write
    PlatformEnrollments, whatever the values file."""
    writes = {"create", "update", "patch", "delete", "deletecollection", "*"}
    for values in (None, VALUES_DIR / "production.yaml"):
        for obj in render(helm, values):
            if obj.kind not in ("ClusterRole", "Role"):
                continue
            for rule in obj.obj.get("rules") or []:
                resources = set(rule.get("resources") or [])
                if resources & {"platformenrollments", "*"} and set(rule["verbs"]) & writes:
                    raise AssertionError(f"{obj.name} may write PlatformEnrollments: {rule}")


def test_leader_election_is_confined_to_one_lease_each_in_the_release_namespace(helm: Helm):
    objs = render(helm, None)
    roles = [o.obj for o in objs if o.kind == "Role" and o.name.endswith("-leader-election")]
    assert sorted(r["metadata"]["name"] for r in roles) == [
        "sod-sod-operator-operator-leader-election",
        "sod-sod-operator-verifier-leader-election",
    ]
    for role in roles:
        assert role["metadata"]["namespace"] == NAMESPACE
        lease = role["metadata"]["name"].removesuffix("-leader-election")
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [lease],
                "verbs": ["get", "update"],
            },
        ]


def test_published_nonces_are_the_only_config_map_the_verifier_and_agents_may_touch(helm: Helm):
    """The verifier may create ConfigMaps in its namespace (RBAC cannot confine a create by name)
    but read and update only the challenges and renewals ConfigMaps, and delete none; the
    node-agents may only read the challenges. No ClusterRole grants ConfigMaps, and no other
    Role of the chart does but the operator's read of the renewals (below)."""
    objs = render(helm, None)
    roles = {o.name: o.obj for o in objs if o.kind == "Role"}
    verifier = roles["sod-sod-operator-verifier-challenges"]
    agent = roles["sod-sod-operator-node-agent-challenges"]
    assert verifier["metadata"]["namespace"] == agent["metadata"]["namespace"] == NAMESPACE
    assert verifier["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CHALLENGES, RENEWALS],
         "verbs": ["get", "list", "watch", "update"]},
    ]  # fmt: skip
    assert agent["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CHALLENGES],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    bindings = {o.name: o.obj for o in objs if o.kind == "RoleBinding"}
    for name, sa in (
        ("sod-sod-operator-verifier-challenges", "sod-sod-operator-verifier"),
        ("sod-sod-operator-node-agent-challenges", "sod-sod-operator-node-agent"),
    ):
        assert bindings[name]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name,
        }  # fmt: skip
        assert bindings[name]["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
        ]
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        granting = set(rules_granting(objs, "", "configmaps", verb))
        assert granting <= {
            "sod-sod-operator-verifier-challenges", "sod-sod-operator-node-agent-challenges",
            "sod-sod-operator-operator-renewals",
        }, (verb, granting)  # fmt: skip


def test_the_operator_reads_only_the_renewals_config_map_it_is_told_to(helm: Helm):
    """The operator reads the verifier's renewals ConfigMap, by name, in the release namespace,
    and nothing else of ConfigMaps; its Deployment names that one."""
    objs = render(helm, None)
    role = {o.name: o.obj for o in objs if o.kind == "Role"}["sod-sod-operator-operator-renewals"]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [RENEWALS],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    binding = {o.name: o.obj for o in objs if o.kind == "RoleBinding"}[
        "sod-sod-operator-operator-renewals"
    ]
    assert binding["roleRef"]["name"] == "sod-sod-operator-operator-renewals"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sod-sod-operator-operator", "namespace": NAMESPACE}
    ]
    for verb in ("create", "update", "patch", "delete"):
        assert "sod-sod-operator-operator-renewals" not in rules_granting(
            objs, "", "configmaps", verb
        )
    (container,) = _deployment(objs, "-operator")["spec"]["template"]["spec"]["containers"]
    assert f"--renewals-namespace={NAMESPACE}" in container["args"]
    assert f"--renewals-configmap={RENEWALS}" in container["args"]
    assert RENEWALS.removeprefix("sod-sod-operator") == RENEWALS_SUFFIX


def test_tenant_roles_aggregate_securevms_and_never_grant_node_attestations(helm: Helm):
    objs = render(helm, None)
    tenant = [o for o in objs if o.kind == "ClusterRole" and "-user-roles-" in o.name]
    labels = {
        o.name.rsplit("-", 2)[-2] + "-" + o.name.rsplit("-", 1)[-1]: o.obj["metadata"]["labels"]
        for o in tenant
    }
    assert labels["securevm-view"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert labels["securevm-edit"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["securevm-edit"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels["securevm-edit"]
    for o in tenant:
        for rule in o.obj["rules"]:
            assert not any(r.startswith("nodeattestations") for r in rule["resources"]), o
            assert "securevms/status" not in rule["resources"] or rule["verbs"] == [
                "get", "list", "watch",
            ]  # fmt: skip
    (binding,) = [
        o.obj for o in objs if o.kind == "ClusterRoleBinding" and o.name.endswith("catalog-reader")
    ]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
    ]


def test_admission_policy_confines_the_node_agent_to_its_own_node(helm: Helm):
    objs = render(helm, None)
    policies = {p["metadata"]["name"]: p for p in by_kind(objs, "ValidatingAdmissionPolicy")}
    bindings = {b["metadata"]["name"]: b for b in by_kind(objs, "ValidatingAdmissionPolicyBinding")}
    assert (
        sorted(policies)
        == sorted(bindings)
        == [
            "sod-sod-operator-node-agent-own-node",
            "sod-sod-operator-trust-labels-verifier-only",
            "sod-sod-operator-verifier-labels-only",
        ]
    )
    for name, binding in bindings.items():
        assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    spec = policies["sod-sod-operator-node-agent-own-node"]["spec"]
    assert spec["failurePolicy"] == "Fail"
    (match,) = spec["matchConditions"]
    assert match["expression"] == (
        "request.userInfo.username == "
        "'system:serviceaccount:sod-system:sod-sod-operator-node-agent'"
    )
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert "authentication.kubernetes.io/node-name" in spec["variables"][0]["expression"]


def test_external_identities_are_used_by_name(helm: Helm):
    objs = render(helm, VALUES_DIR / "external-identities.yaml")
    assert not [o for o in objs if o.kind in ("ServiceAccount", "ClusterRole", "Role")]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
        for kind in ("Deployment", "DaemonSet")
        for d in by_kind(objs, kind)
    }
    assert sorted(pods.values()) == ["sod-node-agent-sa", "sod-operator-sa", "sod-verifier-sa"]
    conditions = {
        p["metadata"]["name"]: p["spec"]["matchConditions"][0]["expression"]
        for p in by_kind(objs, "ValidatingAdmissionPolicy")
    }
    assert (
        "system:serviceaccount:sod-system:sod-node-agent-sa"
        in (conditions["sod-sod-operator-node-agent-own-node"])
    )
    assert (
        "system:serviceaccount:sod-system:sod-verifier-sa"
        in (conditions["sod-sod-operator-verifier-labels-only"])
    )


# --- the command lines match the programs' real flags ------------------------------------------


@variants
def test_node_agent_args_parse_with_sod_node_agent(
    helm: Helm, values: Path | None, monkeypatch: pytest.MonkeyPatch
):
    from sod_node_agent.main import build_parser

    for ds in by_kind(render(helm, values), "DaemonSet"):
        (container,) = ds["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["sod-node-agent"]
        for env in container["env"]:  # the plain values; NODE_NAME comes from the downward API
            if "value" in env:
                monkeypatch.setenv(env["name"], env["value"])
        args = [a.replace("$(NODE_NAME)", "node-1") for a in container["args"]]
        parsed = build_parser().parse_args(args)
        assert parsed.node == "node-1"
        assert parsed.tcti.startswith(("device:/dev/", "swtpm:path="))
        # The agent reads the nonces where the verifier publishes them.
        fullname = ds["metadata"]["name"].removesuffix("-node-agent")
        want = (NAMESPACE, f"{fullname}-attestation-challenges")
        assert (parsed.namespace, parsed.challenges) == want


def test_chart_rbac_and_policies_equal_the_trust_monitors_manifests(helm: Helm):
    """`sod-verifier manifests` (used by the sandbox) and the chart describe the same least
    privilege: with the release named so that the service accounts get the same names, the
    verifier's and node-agent's rules and all three admission policies are identical."""
    from sod_operator.verifier import rbac

    objs = render(helm, None, "--set", "fullnameOverride=sod")
    chart = {(o.kind, o.name): o.obj for o in objs}
    compared = 0
    for want in rbac.manifests(NAMESPACE):
        key = (want["kind"], want["metadata"]["name"])
        if want["kind"] == "Namespace":
            continue
        assert key in chart, f"the chart has no {key[0]} {key[1]}"
        got = chart[key]
        if want["kind"] == "ClusterRole":

            def triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
                return {
                    (g, r, v)
                    for rule in rules
                    for g in rule["apiGroups"]
                    for r in rule["resources"]
                    for v in rule["verbs"]
                }

            assert triples(got["rules"]) == triples(want["rules"]), key
        elif want["kind"] == "Role":  # resource names too: the Lease, the challenges ConfigMap
            assert got["rules"] == want["rules"], key
        elif "spec" in want:
            assert got["spec"] == want["spec"], key
        elif want["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            assert got["subjects"] == want["subjects"], key
            assert got["roleRef"] == want["roleRef"], key
        compared += 1
    assert compared >= 14


@variants
def test_verifier_args_parse_with_sod_verifier(helm: Helm, values: Path | None):
    from sod_operator.verifier.main import build_parser

    for dep in by_kind(render(helm, values), "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        if container["command"] != ["sod-verifier"]:
            continue
        parsed = build_parser().parse_args(container["args"])
        assert parsed.command == "run"
        assert str(parsed.ek_ca_bundle) == "/etc/sod/ek-ca/ek-ca-bundle.pem"
        # It publishes the nonces where the agents read them (the namespace is the Lease's).
        fullname = dep["metadata"]["name"].removesuffix("-verifier")
        want = (NAMESPACE, f"{fullname}-attestation-challenges")
        assert (parsed.lease_namespace, parsed.challenges) == want
        assert parsed.challenge_interval > 0
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert parsed.metrics_port == ports["metrics"]


def test_service_monitor_selects_both_metrics_services_by_port_name(helm: Helm):
    objs = render(helm, VALUES_DIR / "production.yaml")
    (sm,) = by_kind(objs, "ServiceMonitor")
    selector = sm["spec"]["selector"]
    services = by_kind(objs, "Service")
    assert len(services) == 2
    for svc in services:
        labels = svc["metadata"]["labels"]
        assert selector["matchLabels"].items() <= labels.items()
        (expr,) = selector["matchExpressions"]
        assert labels[expr["key"]] in expr["values"]
        assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
        assert svc["spec"]["ports"][0]["port"] == 9443
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The job label stays the Service name, which the PrometheusRule's "down" alerts select.
    assert "jobLabel" not in sm["spec"]
    (rule,) = by_kind(objs, "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    for svc in services:
        assert f'job="{svc["metadata"]["name"]}"' in exprs


@variants
def test_operator_args_parse_with_sod_operator(helm: Helm, values: Path | None):
    from sod_operator.main import _parser

    for dep in by_kind(render(helm, values), "Deployment"):
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        if container["command"] != ["sod-operator"]:
            continue
        parsed = _parser().parse_args(container["args"])
        assert parsed.renewals_namespace == dep["metadata"]["namespace"]
        assert parsed.renewals_configmap.endswith(RENEWALS_SUFFIX)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert parsed.liveness_port == ports["health"]
        assert parsed.metrics_port == ports.get("metrics", 0)
        assert parsed.bind_address == "0.0.0.0"
        probe = container.get("livenessProbe", {}).get("httpGet", {})
        assert probe in ({}, {"path": "/healthz", "port": "health"})


def test_relocation_defaults_are_the_operators():
    from sod_codegen.chart_values import Relocation
    from sod_operator.policy.settings import RelocationSettings

    ours = Relocation().model_dump()
    theirs = RelocationSettings()
    assert ours == {name: getattr(theirs, name) for name in ours}


def test_every_container_command_is_a_console_script_of_the_project(helm: Helm):
    import tomllib

    scripts = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    for kind in ("Deployment", "DaemonSet"):
        for obj in by_kind(render(helm, None), kind):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                (command,) = container["command"]
                assert command in scripts, f"{obj['metadata']['name']}: {command}"


def test_a_long_release_name_still_gives_valid_object_names(helm: Helm):
    release = "a-rather-long-release-name-for-a-production-cluster-x"  # 53 characters
    objs = parse_rendered(
        helm.template(VALUES_DIR / "production.yaml", "--set", "fullnameOverride=", release=release)
    )
    dns_label = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for o in objs:
        assert len(o.name) <= 253, o
        if o.kind in ("Service", "Namespace"):
            assert len(o.name) <= 63, o
            assert dns_label.match(o.name), o
    services = [o.name for o in objs if o.kind == "Service"]
    assert len(set(services)) == 2, services
