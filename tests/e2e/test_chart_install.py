"""The Helm chart against the test bed's real kube-apiserver.

Covers:
* `helm template` with the defaults and every tests/chart/values/*.yaml, each object validated by
  a server-side dry-run (schemas, RBAC objects, CEL of the admission policies, our CRDs);
* `helm install` creates every object of the release, the CRDs become Established and keep the
  `helm.sh/resource-policy: keep` annotation, and the admission policies type-check cleanly;
* least privilege as the apiserver enforces it (`kubectl auth can-i` as each service account and
  as a tenant bound to the aggregated `edit` role), and the admission policies in action with
  real tokens: a node-agent token bound to a pod on node X may write only NodeAttestation X, the
  verifier may change only trust labels, nobody else may set them (all writes are dry-runs);
* `helm upgrade` keeps existing SecureVMs; `helm uninstall` keeps the CRDs and the SecureVMs.

Not covered: running pods (no images can be pulled here; kwok reports the pods as running, but
nothing runs), and a server-side check of ServiceMonitor/PrometheusRule (the test bed has no
monitoring.coreos.com CRDs; tests/chart/test_prometheusrule.py checks them offline).

The install adopts the CRDs the test bed installed (Helm's ownership annotations) and hands them
back on teardown, so the other e2e modules keep their CRDs and objects.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sod_codegen import crdgen
from sod_testbed.cluster import LocalCluster
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path

from tests.chart.helmcli import (
    CHART,
    VALUES_DIR,
    Helm,
    find_helm,
    parse_rendered,
    variant_ids,
    variant_paths,
)
from tests.e2e.harness import wait_for

RELEASE = "sod-e2e"
GROUP = "sod.dev"
# Every CRD the chart ships (the generator's list, so a new kind is never forgotten here).
CRDS = [f"{crd.plural}.{GROUP}" for crd in crdgen.CRDS]
TRUST_LABEL = "sod.node-restriction.kubernetes.io/profile.tpm"
# Kinds whose API the test bed does not serve (prometheus-operator's).
UNSERVED = {"ServiceMonitor", "PrometheusRule"}
HELM_OWNERSHIP_LABELS = (
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "helm.sh/chart",
)
HELM_OWNERSHIP_ANNOTATIONS = (
    "meta.helm.sh/release-name",
    "meta.helm.sh/release-namespace",
    "helm.sh/resource-policy",
)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))


def kubectl(
    sandbox: LocalCluster, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(sandbox.binaries.kubectl), f"--kubeconfig={kubeconfig or sandbox.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}", pytrace=False)
    return proc


def token_kubeconfig(sandbox: LocalCluster, path: Path, token: str) -> Path:
    ca = base64.b64encode(sandbox.pki.ca.cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sb", "cluster": {"server": sandbox.server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sb", "context": {"cluster": "sb", "user": "sa"}}],
        "current-context": "sb",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def request_token(
    kube_api: KubeApi, namespace: str, sa: str, pod: dict[str, Any] | None = None
) -> str:
    """A short-lived token of `sa`; bound to `pod` (and so to its node) when given."""
    spec: dict[str, Any] = {"audiences": [], "expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }
    out = kube_api.create(
        resource_path("v1", "serviceaccounts", namespace=namespace, name=sa, subresource="token"),
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(out["status"]["token"])


def dry_run(
    api: KubeApi, method: str, path: str, body: Any, patch: bool = False
) -> ApiError | None:
    """Send a write with dryRun=All (admission and authorization run, nothing is stored)."""
    try:
        if patch:
            api.request(
                "PATCH",
                path,
                query={"dryRun": "All"},
                body=body,
                content_type="application/merge-patch+json",
            )
        else:
            api.request(method, path, query={"dryRun": "All"}, body=body)
    except ApiError as err:
        return err
    return None


def rejected(err: ApiError | None) -> ApiError:
    assert err is not None, "the apiserver admitted a write it must reject"
    return err


def role_ref(kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


# --- helm template + server-side dry-run ------------------------------------------------------


@pytest.mark.parametrize("values", variant_paths(), ids=variant_ids())
def test_every_rendered_object_passes_a_server_side_dry_run(
    helm: Helm, sandbox: LocalCluster, namespace: str, values: Path | None, tmp_path: Path
):
    objs = parse_rendered(helm.template(values, release="sod-dry", namespace=namespace))
    served = [o for o in objs if o.kind not in UNSERVED]
    assert served
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all([o.obj for o in served], sort_keys=False))
    proc = kubectl(
        sandbox,
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager=sod-chart-e2e",
        "-f",
        str(manifest),
        check=False,
    )
    assert proc.returncode == 0, f"the apiserver rejected rendered objects:\n{proc.stderr}"
    reported = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    assert len(reported) == len(served), proc.stdout


# --- helm install -----------------------------------------------------------------------------


@dataclass
class Release:
    namespace: str
    notes: str
    values: Path


def _set_crd_ownership(kube_api: KubeApi, namespace: str | None) -> None:
    """Adopt the test bed's CRDs into the release (namespace), or hand them back (None)."""
    for name in CRDS:
        if namespace is None:
            labels: dict[str, Any] = dict.fromkeys(HELM_OWNERSHIP_LABELS)
            annotations: dict[str, Any] = dict.fromkeys(HELM_OWNERSHIP_ANNOTATIONS)
        else:
            labels = {"app.kubernetes.io/managed-by": "Helm"}
            annotations = {
                "meta.helm.sh/release-name": RELEASE,
                "meta.helm.sh/release-namespace": namespace,
            }
        kube_api.merge_patch(
            resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name),
            {"metadata": {"labels": labels, "annotations": annotations}},
        )


@pytest.fixture(scope="module")
def release(
    helm: Helm,
    sandbox: LocalCluster,
    kube_api: KubeApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    namespace = f"sod-chart-{uuid.uuid4().hex[:5]}"
    kube_api.create(
        resource_path("v1", "namespaces"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    sandbox.wait_for_service_account(namespace, timeout=30)
    # The production test values carry a throwaway EK CA certificate.
    pem = yaml.safe_load((VALUES_DIR / "production.yaml").read_text())["verifier"]["ekCaBundle"]
    values = tmp_path_factory.mktemp("release") / "values.yaml"
    values.write_text(yaml.safe_dump({"verifier": {"ekCaBundle": pem}}))
    _set_crd_ownership(kube_api, namespace)
    try:
        proc = helm.run(
            "install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values),
            kubeconfig=sandbox.kubeconfig,
        )  # fmt: skip
        yield Release(namespace, proc.stdout, values)
    finally:
        helm.run(
            "uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found",
            kubeconfig=sandbox.kubeconfig, check=False,
        )  # fmt: skip
        _set_crd_ownership(kube_api, None)
        kube_api.delete(resource_path("v1", "namespaces", name=namespace))


def _manifest_objects(helm: Helm, sandbox: LocalCluster, release: Release) -> list[Any]:
    text = helm.run(
        "get", "manifest", RELEASE, "--namespace", release.namespace, kubeconfig=sandbox.kubeconfig
    ).stdout
    return [o for o in parse_rendered(text)]


def test_install_creates_every_object_of_the_release(
    helm: Helm, sandbox: LocalCluster, release: Release, tmp_path: Path
):
    objs = _manifest_objects(helm, sandbox, release)
    kinds = {o.kind for o in objs}
    assert {"Deployment", "DaemonSet", "ValidatingAdmissionPolicy", "ConfigMap"} <= kinds
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all([o.obj for o in objs]))
    got = json.loads(kubectl(sandbox, "get", "-f", str(manifest), "-o", "json").stdout)
    items = got["items"] if got.get("kind") == "List" else [got]
    assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == sorted(
        (o.kind, o.name) for o in objs
    )
    for item in items:
        labels = item["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == RELEASE, item["metadata"]["name"]


def test_crds_are_established_and_protected_by_keep(kube_api: KubeApi, release: Release):
    del release
    for name in CRDS:
        crd = kube_api.get(
            resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name)
        )
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, name


def test_admission_policies_type_check_without_warnings(kube_api: KubeApi, release: Release):
    del release
    policies = [
        p
        for p in kube_api.list(
            resource_path("admissionregistration.k8s.io/v1", "validatingadmissionpolicies"),
            label_selector=f"app.kubernetes.io/instance={RELEASE}",
        )["items"]
    ]
    assert len(policies) == 3
    for policy in policies:
        name = policy["metadata"]["name"]
        path = resource_path(
            "admissionregistration.k8s.io/v1", "validatingadmissionpolicies", name=name
        )
        checked = wait_for(
            lambda path=path: kube_api.get(path),
            lambda p: p.get("status", {}).get("observedGeneration") == p["metadata"]["generation"],
            f"the apiserver to type-check {name}",
        )
        warnings = checked["status"].get("typeChecking", {}).get("expressionWarnings")
        assert not warnings, f"{name}: {warnings}"


def test_install_notes_say_what_to_do_next(release: Release):
    assert "Next steps:" in release.notes
    assert f"kubectl -n {release.namespace} get deploy,ds" in release.notes
    assert "sodctl explain svm" in release.notes
    assert "ACTION REQUIRED" not in release.notes, "an EK CA bundle was given"


def test_notes_without_an_ek_ca_bundle_say_how_to_create_it(
    helm: Helm, sandbox: LocalCluster, namespace: str
):
    # A server-side dry-run install (CRDs left out: the test bed's are owned by the release above).
    proc = helm.run(
        "install", "sod-notes", str(CHART), "--namespace", namespace, "--dry-run=server",
        "--set", "crds.enabled=false", kubeconfig=sandbox.kubeconfig,
    )  # fmt: skip
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert notes.lstrip().startswith("NOTE: crds.enabled is false"), notes
    assert "ACTION REQUIRED: the verifier needs the EK CA certificates" in notes
    assert (
        f"kubectl -n {namespace} create configmap sod-notes-sod-operator-ek-ca-bundle \\\n"
        "    --from-file=ek-ca-bundle.pem=<your-ek-ca-bundle.pem>"
    ) in notes


# --- least privilege, as the apiserver enforces it -------------------------------------------


def _can(sandbox: LocalCluster, who: list[str], verb: str, resource: str, *extra: str) -> bool:
    proc = kubectl(sandbox, "auth", "can-i", verb, resource, *who, *extra, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


PERMISSIONS = [
    # (component, verb, resource, extra args, allowed)
    ("operator", "patch", "securevms.sod.dev", ["-A"], False),  # never the tenant's spec
    ("operator", "patch", "securevms.sod.dev", ["-A", "--subresource=status"], True),
    ("operator", "delete", "securevms.sod.dev", ["-A"], False),
    ("operator", "create", "virtualmachineinstancemigrations.kubevirt.io", ["-A"], True),
    ("operator", "delete", "virtualmachineinstancemigrations.kubevirt.io", ["-A"], False),
    ("operator", "delete", "virtualmachines.kubevirt.io", ["-A"], False),
    ("operator", "list", "nodes", [], True),
    ("operator", "patch", "nodes", [], False),
    ("operator", "patch", "nodeattestations.sod.dev", ["--subresource=status"], False),
    ("verifier", "patch", "nodes", [], True),
    ("verifier", "delete", "nodes", [], False),
    ("verifier", "patch", "nodeattestations.sod.dev", ["--subresource=status"], True),
    ("verifier", "patch", "nodeattestations.sod.dev", [], False),
    ("verifier", "list", "securevms.sod.dev", ["-A"], False),
    ("node-agent", "create", "nodeattestations.sod.dev", [], True),
    ("node-agent", "update", "nodeattestations.sod.dev", [], True),
    ("node-agent", "delete", "nodeattestations.sod.dev", [], False),
    ("node-agent", "patch", "nodeattestations.sod.dev", ["--subresource=status"], False),
    ("node-agent", "patch", "nodes", [], False),
    ("node-agent", "list", "securevms.sod.dev", ["-A"], False),
]


def test_each_component_can_do_what_it_needs_and_nothing_more(
    sandbox: LocalCluster, release: Release
):
    wrong = []
    for component, verb, resource, extra, allowed in PERMISSIONS:
        who = [f"--as=system:serviceaccount:{release.namespace}:{RELEASE}-sod-operator-{component}"]
        if _can(sandbox, who, verb, resource, *extra) != allowed:
            wrong.append(f"{component} {verb} {resource} {' '.join(extra)}: expected {allowed}")
    assert not wrong, "\n".join(wrong)


def test_only_the_operator_holds_its_lease(sandbox: LocalCluster, release: Release):
    ns = release.namespace
    lease = f"leases.coordination.k8s.io/{RELEASE}-sod-operator-operator"

    def who(component: str) -> list[str]:
        return [f"--as=system:serviceaccount:{ns}:{RELEASE}-sod-operator-{component}", "-n", ns]

    assert _can(sandbox, who("operator"), "update", lease)
    assert _can(sandbox, who("operator"), "create", "leases.coordination.k8s.io")
    assert not _can(sandbox, who("operator"), "update", "leases.coordination.k8s.io/other")
    assert not _can(sandbox, who("operator"), "update", lease, "-n", "default"), "other namespaces"
    assert not _can(sandbox, who("verifier"), "update", lease)


def test_tenants_get_securevms_through_the_default_roles_but_never_evidence(
    sandbox: LocalCluster, kube_api: KubeApi, namespace: str, release: Release
):
    del release
    for user, role in (("alice", "edit"), ("bob", "view")):
        kube_api.create(
            resource_path("rbac.authorization.k8s.io/v1", "rolebindings", namespace=namespace),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": role_ref("ClusterRole", role),
                "subjects": [{**role_ref("User", user)}],
            },
        )  # fmt: skip
    alice = ["--as=alice", "--as-group=system:authenticated", "-n", namespace]
    bob = ["--as=bob", "--as-group=system:authenticated", "-n", namespace]
    # The controller-manager aggregates our ClusterRoles into edit/view asynchronously.
    wait_for(
        lambda: (_can(sandbox, alice, "create", "securevms.sod.dev"),
                 _can(sandbox, bob, "list", "securevms.sod.dev")),
        lambda got: got == (True, True),
        "the aggregated SecureVM rules to reach edit and view",
    )  # fmt: skip
    assert _can(sandbox, alice, "delete", "securevms.sod.dev")
    assert not _can(sandbox, alice, "patch", "securevms.sod.dev", "--subresource=status")
    assert not _can(sandbox, bob, "create", "securevms.sod.dev")
    for who in (alice, bob):
        assert _can(sandbox, who, "list", "serversecurityprofiles.sod.dev")
        assert _can(sandbox, who, "get", "securitypackages.sod.dev")
        assert not _can(sandbox, who, "create", "serversecurityprofiles.sod.dev")
        assert not _can(sandbox, who, "get", "nodeattestations.sod.dev")
        assert not _can(sandbox, who, "list", "nodes")
    other = ["--as=alice", "--as-group=system:authenticated", "-n", "default"]
    assert not _can(sandbox, other, "create", "securevms.sod.dev"), "only where bound"


# --- the admission policies, with real tokens ---------------------------------------------------


@pytest.fixture(scope="module")
def test_node(kube_api: KubeApi, release: Release) -> Iterator[str]:
    """A Node of our own (tainted, never Ready) so the tests touch no other test's node."""
    del release
    name = f"chart-e2e-{uuid.uuid4().hex[:5]}"
    kube_api.create(
        resource_path("v1", "nodes"),
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"taints": [{"key": "sod.dev/chart-e2e", "effect": "NoSchedule"}]},
        },
    )
    yield name
    kube_api.delete(resource_path("v1", "nodes", name=name))


def _attestation(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "NodeAttestation",
        "metadata": {"name": name, **metadata},
    }


NATT = resource_path(f"{GROUP}/v1alpha1", "nodeattestations")


def test_a_node_agent_writes_only_its_own_nodes_attestation(
    sandbox: LocalCluster, kube_api: KubeApi, release: Release, test_node: str, tmp_path: Path
):
    ns, sa = release.namespace, f"{RELEASE}-sod-operator-node-agent"
    pod = kube_api.create(
        resource_path("v1", "pods", namespace=ns),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "agent-token-holder"},
            "spec": {
                "nodeName": test_node,
                "serviceAccountName": sa,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": "example.invalid/none:0"}],
            },
        },
    )
    bound = KubeApi(
        token_kubeconfig(sandbox, tmp_path / "bound", request_token(kube_api, ns, sa, pod))
    )
    unbound = KubeApi(
        token_kubeconfig(sandbox, tmp_path / "unbound", request_token(kube_api, ns, sa))
    )

    assert dry_run(bound, "POST", NATT, _attestation(test_node)) is None

    err = rejected(dry_run(bound, "POST", NATT, _attestation("some-other-node")))
    assert err.status in (403, 422), err
    assert (
        f"may write only the NodeAttestation of its own node: this agent is bound to node "
        f"{test_node} and may not write NodeAttestation some-other-node"
    ) in err.message

    err = rejected(
        dry_run(bound, "POST", NATT, _attestation(test_node, finalizers=["example.com/block"]))
    )
    assert "may not set finalizers" in err.message, err

    err = rejected(dry_run(unbound, "POST", NATT, _attestation(test_node)))
    assert "carries no node name" in err.message, err

    err = rejected(dry_run(bound, "DELETE", f"{NATT}/{test_node}", None))
    assert err.status == 403, err
    assert err.reason == "Forbidden", err
    err = rejected(
        dry_run(
            bound,
            "PATCH",
            resource_path("v1", "nodes", name=test_node),
            {"metadata": {"labels": {TRUST_LABEL: "verified"}}},
            patch=True,
        )
    )
    assert err.status == 403, err


def test_only_the_verifier_changes_trust_labels_and_only_those(
    sandbox: LocalCluster, kube_api: KubeApi, release: Release, test_node: str, tmp_path: Path
):
    ns = release.namespace
    node = resource_path("v1", "nodes", name=test_node)
    verifier = KubeApi(
        token_kubeconfig(
            sandbox,
            tmp_path / "verifier",
            request_token(kube_api, ns, f"{RELEASE}-sod-operator-verifier"),
        )
    )

    def label(api: KubeApi, key: str) -> ApiError | None:
        return dry_run(api, "PATCH", node, {"metadata": {"labels": {key: "verified"}}}, patch=True)

    assert label(verifier, TRUST_LABEL) is None
    err = rejected(label(verifier, "example.com/other"))
    assert "the verifier may change only labels under" in err.message, err
    err = rejected(dry_run(verifier, "PATCH", node, {"spec": {"unschedulable": True}}, patch=True))
    assert "may not change a node's spec" in err.message, err

    # Another identity allowed to patch nodes (say, a node labeller) cannot forge trust.
    kube_api.create(
        resource_path("v1", "serviceaccounts", namespace=ns),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "node-labeller"}},
    )
    role = f"{ns}-node-labeller"
    kube_api.create(
        resource_path("rbac.authorization.k8s.io/v1", "clusterroles"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        },
    )
    kube_api.create(
        resource_path("rbac.authorization.k8s.io/v1", "clusterrolebindings"),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": role_ref("ClusterRole", role),
            "subjects": [{"kind": "ServiceAccount", "name": "node-labeller", "namespace": ns}],
        },
    )  # fmt: skip
    try:
        labeller = KubeApi(
            token_kubeconfig(
                sandbox, tmp_path / "labeller", request_token(kube_api, ns, "node-labeller")
            )
        )
        wait_for(
            lambda: label(labeller, "example.com/rack"),
            lambda err: err is None,
            "the labeller's ClusterRoleBinding to take effect",
        )
        err = rejected(label(labeller, TRUST_LABEL))
        assert err is not None, "a non-verifier set a trust label"
        assert "only the verifier may set or remove labels under" in err.message, err
        assert "node-labeller" in err.message
        # Cluster admins (system:masters) keep a break-glass.
        assert label(kube_api, TRUST_LABEL) is None
    finally:
        kube_api.delete(
            resource_path("rbac.authorization.k8s.io/v1", "clusterrolebindings", name=role)
        )
        kube_api.delete(resource_path("rbac.authorization.k8s.io/v1", "clusterroles", name=role))


# --- upgrade and uninstall --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_svm(kube_api: KubeApi, release: Release) -> dict[str, Any]:
    svm = yaml.safe_load((CHART.parents[1] / "examples" / "securevm-vm-a.yaml").read_text())
    svm["metadata"]["namespace"] = release.namespace
    return kube_api.create(
        resource_path(f"{GROUP}/v1alpha1", "securevms", namespace=release.namespace), svm
    )


def _svm_path(release: Release, svm: dict[str, Any]) -> str:
    return resource_path(
        f"{GROUP}/v1alpha1", "securevms", namespace=release.namespace, name=svm["metadata"]["name"]
    )


def test_upgrade_keeps_existing_securevms(
    helm: Helm,
    sandbox: LocalCluster,
    kube_api: KubeApi,
    release: Release,
    tenant_svm: dict[str, Any],
):
    helm.run(
        "upgrade", RELEASE, str(CHART), "--namespace", release.namespace, "--reuse-values",
        "--set", "operator.logLevel=debug", kubeconfig=sandbox.kubeconfig,
    )  # fmt: skip
    dep = kube_api.get(
        resource_path(
            "apps/v1",
            "deployments",
            namespace=release.namespace,
            name=f"{RELEASE}-sod-operator-operator",
        )
    )
    assert "--debug" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    after = kube_api.get(_svm_path(release, tenant_svm))
    assert after["metadata"]["uid"] == tenant_svm["metadata"]["uid"]
    assert after["spec"] == tenant_svm["spec"]


def test_uninstall_keeps_the_crds_and_the_securevms(
    helm: Helm,
    sandbox: LocalCluster,
    kube_api: KubeApi,
    release: Release,
    tenant_svm: dict[str, Any],
):
    helm.run("uninstall", RELEASE, "--namespace", release.namespace, kubeconfig=sandbox.kubeconfig)
    for name in CRDS:
        path = resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name)
        assert kube_api.get_or_none(path) is not None, f"{name} was deleted"
    assert (
        kube_api.get(_svm_path(release, tenant_svm))["metadata"]["uid"]
        == (tenant_svm["metadata"]["uid"])
    )
    gone = resource_path(
        "apps/v1",
        "deployments",
        namespace=release.namespace,
        name=f"{RELEASE}-sod-operator-operator",
    )
    assert kube_api.get_or_none(gone) is None
    policies = kube_api.list(
        resource_path("admissionregistration.k8s.io/v1", "validatingadmissionpolicies"),
        label_selector=f"app.kubernetes.io/instance={RELEASE}",
    )["items"]
    assert policies == [], "the admission policies leave with the release"
