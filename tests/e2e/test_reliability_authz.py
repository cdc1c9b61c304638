"""Authorization against the real RBAC, with impersonation (issue 8, item 5).

A private control plane (`tests.reliability.bed`, with the apiserver's audit log on) gets the
chart's RBAC exactly as `helm template` renders it: ServiceAccounts, ClusterRoles (including the
roles aggregated into `edit`/`view`), bindings, the leader-election Role and the
ValidatingAdmissionPolicies. Then:

* a tenant (`alice`, bound to `edit` in `team-a`; requests impersonated as `alice` in
  `system:authenticated`) cannot read, list, watch, create, change or delete SecureVMs in
  `team-b` or cluster-wide, cannot write SecureVM status (forge compliance, also not by
  creating a SecureVM with a status), cannot create, change or delete profiles, packages or
  attestations, cannot read attestations or nodes, cannot label nodes and cannot grant itself
  more; positive controls show the identity works where it should;
* `vmRef` cannot reach a VM in another namespace: no namespace field (strict decoding), no
  `ns/name` (pattern), and a same-named VM elsewhere is never adopted (`VirtualMachineNotFound`,
  the other VM untouched);
* the operator runs as the chart's ServiceAccount (a real token) through deployment, live
  migration, adoption, restart relocation of a confidential VM and fail-closed `Stop`; the audit
  log shows it was never refused, and every grant of its role is either used or listed with the
  reason it was not exercised here (so a grant nobody needs is a test failure);
* the trust monitor's own manifests (`sod_operator.verifier.rbac`, used by the trust e2e tests)
  agree with the chart's verifier and node-agent roles and policies.

The node-agent's per-node confinement is tested with real node-bound tokens by
tests/e2e/test_trust.py and tests/e2e/test_chart_install.py (counted in docs/RELIABILITY.md);
the one attack they miss — an agent writing its verdict through the main resource — is here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_KEY
from sod_operator.verifier import rbac as verifier_rbac
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.nodes import parse_nodes
from sod_testbed.trust import token_kubeconfig

from tests.chart.helmcli import VALUES_DIR, Helm, find_helm, parse_rendered
from tests.e2e.harness import condition, vm_manifest, wait_for
from tests.e2e.operator_run import OperatorProcess, Trust, install_catalog, securevm
from tests.reliability.bed import As, PrivateBed
from tests.reliability.figures import record

RELIABILITY_ITEM = "5"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

SOD = "sod.dev/v1alpha1"
KV = "kubevirt.io/v1"
RBAC = "rbac.authorization.k8s.io/v1"
RELEASE, RELEASE_NS = "sod", "sod-system"
TEAM_A, TEAM_B = "team-a", "team-b"
X, Y, Z = "hyperwall-1", "hyperwall-2", "datasafe-1"
S1, S2 = "sev-snp-1", "sev-snp-2"  # where the confidential VM can run
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}
APPLIED_KINDS = tuple(PLURALS)
VM_B = {"options": ["Basic", "HypervisorProtection"]}


@dataclass
class Chart:
    objects: list[JsonObj]
    operator_sa: str
    lease_name: str
    renewals: tuple[str, str]
    """(namespace, name) of the verifier's renewals ConfigMap, as the operator is told."""

    def cluster_role(self, name: str) -> JsonObj:
        return next(
            o for o in self.objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name
        )


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBed]:
    bed = PrivateBed(
        tmp_path_factory.mktemp("authz-bed"),
        parse_nodes("hyperwall=2,datasafe=1,plain=2,sev-snp=2"),
        PlayerConfig(time_scale=0.05, resync_seconds=2.0),
        audit=True,
    )
    try:
        bed.start()
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="module")
def admin(bed: PrivateBed) -> KubeApi:
    api = bed.cluster.api()
    install_catalog(api)
    for ns in (RELEASE_NS, TEAM_A, TEAM_B):
        bed.create_namespace(ns)
    return api


@pytest.fixture(scope="module")
def chart(bed: PrivateBed, admin: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    helm = Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))
    rendered = [
        r.obj
        for r in parse_rendered(
            helm.template(
                VALUES_DIR / "production.yaml",
                f"--set=operator.namespaces={{{TEAM_A},{TEAM_B}}}",
                release=RELEASE,
                namespace=RELEASE_NS,
            )
        )
    ]
    for obj in rendered:
        if obj["kind"] in APPLIED_KINDS:
            api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
            plural = PLURALS[kind]
            admin.apply(
                resource_path(api_version, plural, meta.get("namespace"), meta["name"]),
                obj,
                "reliability",
            )
    deployment = next(
        o for o in rendered if o["kind"] == "Deployment" and "operator" in o["metadata"]["name"]
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(a.split("=", 1) for a in args if "=" in a)
    return Chart(
        rendered,
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        flags["--lease-name"],
        (flags["--renewals-namespace"], flags["--renewals-configmap"]),
    )


@pytest.fixture(scope="module")
def tenants(bed: PrivateBed, admin: KubeApi, chart: Chart) -> dict[str, As]:
    for user, ns in (("alice", TEAM_A), ("bob", TEAM_B)):
        admin.create(
            resource_path(RBAC, "rolebindings", namespace=ns),
            {
                "apiVersion": RBAC,
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-edit"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": user}],
            },
        )  # fmt: skip
    clients = {u: As(bed.cluster.kubeconfig, u) for u in ("alice", "bob")}

    def can_create(user: str, ns: str) -> bool:
        try:
            clients[user].request(
                "POST",
                resource_path(SOD, "securevms", ns),
                query={"dryRun": "All"},
                body=securevm("probe", {"options": ["Basic"]}),
            )
        except ApiError:
            return False
        return True

    # The controller-manager aggregates the chart's SecureVM rules into `edit` asynchronously.
    wait_for(
        lambda: (can_create("alice", TEAM_A), can_create("bob", TEAM_B)),
        lambda got: got == (True, True),
        "the aggregated SecureVM rules to reach `edit`",
    )
    return clients


def _attempt(api: KubeApi, method: str, path: str, body: Any = None, **query: Any) -> int:
    try:
        api.request(method, path, body=body, query=query or None,
                    content_type="application/merge-patch+json" if method == "PATCH"
                    else "application/json")  # fmt: skip
    except ApiError as err:
        return err.status
    return 200


def test_a_tenant_stays_in_its_namespace_and_out_of_the_catalog(
    admin: KubeApi, tenants: dict[str, As]
):
    alice, bob = tenants["alice"], tenants["bob"]
    bob.create(resource_path(SOD, "securevms", TEAM_B), securevm("bob-vm", {"options": ["Basic"]}))
    mine = alice.create(
        resource_path(SOD, "securevms", TEAM_A),
        {
            **securevm("alice-vm", {"options": ["Basic"]}),
            # Forging compliance on create: the status subresource drops it.
            "status": {"nodeName": "hyperwall-1", "nodeProfile": "hyperwall"},
        },
    )
    assert not mine.get("status"), f"a tenant's status was stored: {mine['status']}"
    svm_b = resource_path(SOD, "securevms", TEAM_B, "bob-vm")
    natt = resource_path(SOD, "nodeattestations")
    profile = resource_path(SOD, "serversecurityprofiles", name="hyperwall")
    package = resource_path(SOD, "securitypackages", name="medical-records")
    node = resource_path("v1", "nodes", name=X)
    trust = {"metadata": {"labels": {"sod.node-restriction.kubernetes.io/profile.tdx": "verified"}}}
    denied = [
        ("list SecureVMs of team-b", "GET", resource_path(SOD, "securevms", TEAM_B), None, {}),
        ("watch SecureVMs of team-b", "GET", resource_path(SOD, "securevms", TEAM_B), None,
         {"watch": "true", "timeoutSeconds": 1}),
        ("get a SecureVM of team-b", "GET", svm_b, None, {}),
        ("patch a SecureVM of team-b", "PATCH", svm_b, {"spec": {"security": {"package": "x"}}},
         {}),
        ("delete a SecureVM of team-b", "DELETE", svm_b, None, {}),
        ("create a SecureVM in team-b", "POST", resource_path(SOD, "securevms", TEAM_B),
         securevm("intruder", {"options": ["Basic"]}), {}),
        ("list SecureVMs cluster-wide", "GET", resource_path(SOD, "securevms"), None, {}),
        ("write its own SecureVM's status", "PATCH",
         resource_path(SOD, "securevms", TEAM_A, "alice-vm", "status"),
         {"status": {"nodeProfile": "hyperwall"}}, {}),
        ("create a profile", "POST", resource_path(SOD, "serversecurityprofiles"),
         {"apiVersion": SOD, "kind": "ServerSecurityProfile", "metadata": {"name": "mine"},
          "spec": {"scope": "FullVM", "protections": []}}, {}),
        ("change a profile", "PATCH", profile, {"spec": {"cost": 0}}, {}),
        ("change a profile's status", "PATCH", profile + "/status",
         {"status": {"verifiedNodes": 9}}, {}),
        ("delete a profile", "DELETE", profile, None, {}),
        ("create a package", "POST", resource_path(SOD, "securitypackages"),
         {"apiVersion": SOD, "kind": "SecurityPackage", "metadata": {"name": "mine"},
          "spec": {"options": ["Basic"]}}, {}),
        ("change a package", "PATCH", package, {"spec": {"options": ["Basic"]}}, {}),
        ("delete a package", "DELETE", package, None, {}),
        ("list attestations", "GET", natt, None, {}),
        ("get an attestation", "GET", f"{natt}/{X}", None, {}),
        ("create an attestation", "POST", natt,
         {"apiVersion": SOD, "kind": "NodeAttestation", "metadata": {"name": X}, "spec": {}}, {}),
        ("change an attestation's verdict", "PATCH", f"{natt}/{X}/status",
         {"status": {"verifiedProfiles": ["hyperwall"]}}, {}),
        ("list nodes", "GET", resource_path("v1", "nodes"), None, {}),
        ("set a trust label on a node", "PATCH", node, trust, {}),
        ("create a migration in team-b", "POST",
         resource_path(KV, "virtualmachineinstancemigrations", TEAM_B),
         {"apiVersion": KV, "kind": "VirtualMachineInstanceMigration",
          "metadata": {"name": "m"}, "spec": {"vmiName": "bob-vm"}}, {}),
        ("bind itself to admin", "POST", resource_path(RBAC, "rolebindings", TEAM_A),
         {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "more"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                      "name": "cluster-admin"},
          "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                        "name": "alice"}]}, {}),
    ]  # fmt: skip
    wrong = []
    for what, method, path, body, query in denied:
        status = _attempt(alice, method, path, body, **query)
        if status != 403:
            wrong.append(f"{what}: HTTP {status}, expected 403")
    allowed = [
        ("read the catalog (profiles)", "GET", resource_path(SOD, "serversecurityprofiles")),
        ("read the catalog (packages)", "GET", resource_path(SOD, "securitypackages")),
        ("list its own SecureVMs", "GET", resource_path(SOD, "securevms", TEAM_A)),
    ]
    for what, method, path in allowed:
        if (status := _attempt(alice, method, path)) != 200:
            wrong.append(f"positive control {what}: HTTP {status}")
    assert _attempt(bob, "GET", svm_b) == 200
    assert admin.get(svm_b)["spec"]["security"] == {"options": ["Basic"]}
    record(
        "5",
        "tenant (edit in team-a, impersonated) vs other namespaces, catalog, evidence, nodes",
        len(denied),
        f"{len(denied) - len(wrong)} of {len(denied)} refused with 403; "
        f"{len(allowed)} positive controls allowed; status forged on create dropped",
        refused=[d[0] for d in denied],
    )
    assert not wrong, "\n".join(wrong)


# --- the operator as the chart's ServiceAccount --------------------------------------------------


@pytest.fixture(scope="module")
def operator_kubeconfig(
    bed: PrivateBed, admin: KubeApi, chart: Chart, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig with a token of the chart's operator ServiceAccount."""
    token = admin.create(
        resource_path("v1", "serviceaccounts", RELEASE_NS, chart.operator_sa, "token"),
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 7200}},
    )["status"]["token"]  # fmt: skip
    return token_kubeconfig(
        tmp_path_factory.mktemp("operator-as-sa") / "kubeconfig",
        bed.cluster.server,
        bed.cluster.pki.ca.cert.read_bytes(),
        chart.operator_sa,
        token,
    )


@pytest.fixture(scope="module")
def operator(chart: Chart, operator_kubeconfig: Path) -> Iterator[OperatorProcess]:
    ns, name = chart.renewals
    op = OperatorProcess(
        operator_kubeconfig,
        TEAM_A,
        operator_kubeconfig.parent / "operator.log",
        "--namespace", TEAM_B,
        "--lease-namespace", RELEASE_NS,
        "--lease-name", chart.lease_name,
        "--renewals-namespace", ns,
        "--renewals-configmap", name,
    )  # fmt: skip
    op.start()
    yield op
    op.stop()
    print(f"--- sod-operator log (tail) ---\n{op.log(4000)}")


def _svm(admin: KubeApi, ns: str, name: str) -> JsonObj:
    return admin.get(resource_path(SOD, "securevms", ns, name))


def _ready(admin: KubeApi, ns: str, name: str, node: str | None = None) -> JsonObj:
    return wait_for(
        lambda: _svm(admin, ns, name),
        lambda o: (
            (condition(o, "Ready") or {}).get("status") == "True"
            and (node is None or o.get("status", {}).get("nodeName") == node)
        ),
        f"SecureVM {ns}/{name} Ready{' on ' + node if node else ''}",
        60,
    )


def test_vmref_cannot_reach_a_vm_in_another_namespace(
    admin: KubeApi, tenants: dict[str, As], operator: OperatorProcess
):
    del operator
    alice = tenants["alice"]
    victim = admin.create(resource_path(KV, "virtualmachines", TEAM_B), vm_manifest("victim"))
    strict = {"fieldValidation": "Strict"}
    collection = resource_path(SOD, "securevms", TEAM_A)
    tries = {
        "vmRef.namespace": {"name": "victim", "namespace": TEAM_B},
        "vmRef.name ns/name": {"name": f"{TEAM_B}/victim"},
    }
    refusals = {}
    for what, ref in tries.items():
        body = {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": "grab"},
                "spec": {"security": {"options": ["Basic"]}, "vmRef": ref}}  # fmt: skip
        with pytest.raises(ApiError) as info:
            alice.request("POST", collection, body=body, query=strict)
        refusals[what] = f"HTTP {info.value.status}: {info.value.message}"
        assert info.value.status in (400, 422), info.value
        assert "vmRef" in info.value.message
    alice.create(
        collection,
        {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": "grab"},
         "spec": {"security": {"options": ["Basic"]}, "vmRef": {"name": "victim"}}},
    )  # fmt: skip
    svm = wait_for(
        lambda: _svm(admin, TEAM_A, "grab"),
        lambda o: (condition(o, "Ready") or {}).get("reason") == "VirtualMachineNotFound",
        "grab: VirtualMachineNotFound",
        30,
    )
    after = admin.get(resource_path(KV, "virtualmachines", TEAM_B, "victim"))
    assert after["metadata"].get("labels") == victim["metadata"].get("labels")
    assert after["spec"] == victim["spec"], "the operator changed a VM in another namespace"
    assert not after["metadata"].get("ownerReferences")
    record(
        "5",
        "vmRef at a VM in another namespace",
        3,
        "namespace field and ns/name refused by the apiserver; same name adopted nowhere "
        f"({condition(svm, 'Ready')['reason']}), the other namespace's VM untouched",
        refusals=refusals,
    )


# What the operator's role grants and why; `exercised` says whether the scenario below uses it
# (so the audit must show it), else why it is not exercised here.
GRANT_REASONS: dict[tuple[str, str, str], tuple[str, bool | str]] = {}


def _grant(group: str, resources: str, verbs: str, why: str, exercised: bool | str = True):
    for r in resources.split():
        for v in verbs.split():
            GRANT_REASONS[(group, r, v)] = (why, exercised)


_grant("sod.dev", "securevms", "get list watch", "kopf's listing and watch of SecureVMs")
_grant("sod.dev", "securevms/status", "patch", "status: conditions, placement, history")
_grant("sod.dev", "serversecurityprofiles securitypackages", "get list watch", "the catalog")
_grant("sod.dev", "serversecurityprofiles/status", "patch", "profile status: verified nodes")
_grant("", "nodes", "get list watch", "trust labels (read only)")
_grant("sod.dev", "nodeattestations", "get list watch",
       "verdicts' expiry: a label outliving its verdict is void (read only)")  # fmt: skip
_grant("kubevirt.io", "virtualmachines", "get list watch", "the managed and adopted VMs")
_grant("kubevirt.io", "virtualmachines", "create", "a VM from spec.template")
_grant("kubevirt.io", "virtualmachines", "patch", "affinity, adoption label, fail-closed Stop")
_grant("kubevirt.io", "virtualmachineinstances", "get list watch", "where each VM runs")
_grant("kubevirt.io", "virtualmachineinstances", "delete",
       "restart relocation; re-rendering an instance that was never scheduled")  # fmt: skip
_grant("", "pods", "get list watch", "virt-launcher pods: the node each VMI was bound to")
_grant("kubevirt.io", "virtualmachineinstancemigrations", "get list watch", "migration state")
_grant("kubevirt.io", "virtualmachineinstancemigrations", "create", "relocation")
_grant("apiextensions.k8s.io", "customresourcedefinitions", "get list watch",
       "kopf notices CRDs installed after it started")  # fmt: skip
_grant("", "events", "create", "Events for every decision")
_grant("", "namespaces", "get list watch", "kopf matches `operator.namespaces` (only when set)")
_grant("coordination.k8s.io", "leases", "create get update", "leader election")
_grant("", "configmaps", "get list watch",
       "the verifier's renewals of verdict expiries: one ConfigMap, by name (Role)")  # fmt: skip

# `get` next to `list` gives no access beyond it (list returns the same objects); kopf only lists
# and watches, so these gets are conventional, not exercised.
for (_g, _r, _v), (_why, _) in list(GRANT_REASONS.items()):
    if _v == "get" and (_g, _r, "list") in GRANT_REASONS:
        GRANT_REASONS[(_g, _r, _v)] = (_why, "implied by `list`; kopf lists and watches")


def _role_grants(chart: Chart) -> set[tuple[str, str, str]]:
    out = set()
    for obj in chart.objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        bindings = [
            o
            for o in chart.objects
            if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
            and o["roleRef"]["name"] == obj["metadata"]["name"]
            and any(s.get("name") == chart.operator_sa for s in o.get("subjects", []))
        ]
        if not bindings:
            continue
        for rule in obj["rules"]:
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        out.add((g, r, v))
    return out


def _used(bed: PrivateBed, username: str) -> tuple[set[tuple[str, str, str]], list[str]]:
    used, refused = set(), []
    for ev in bed.audit_events():
        if ev.get("user", {}).get("username") != username:
            continue
        ref = ev.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery (/apis, /version)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = (ref.get("apiGroup", ""), resource, ev["verb"])
        code = (ev.get("responseStatus") or {}).get("code", 0)
        if code == 403:
            refused.append(f"{key}: {(ev.get('responseStatus') or {}).get('message', '')}")
        used.add(key)
    return used, refused


def test_the_operator_needs_exactly_its_role(
    bed: PrivateBed, admin: KubeApi, chart: Chart, operator: OperatorProcess
):
    trust = Trust(admin)
    trust.baseline({X: ("hyperwall",), Y: ("hyperwall",), Z: ("hyperwall",)})
    path = resource_path(SOD, "securevms", TEAM_A)
    # Deployment, then a live migration when its node loses trust.
    admin.create(path, securevm("mover", VM_B))
    src = _ready(admin, TEAM_A, "mover")["status"]["nodeName"]
    # Adoption of an existing VM.
    admin.create(resource_path(KV, "virtualmachines", TEAM_A), vm_manifest("legacy"))
    admin.create(
        path,
        {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": "legacy"},
         "spec": {"security": {"options": ["Basic"]}, "vmRef": {"name": "legacy"}}},
    )  # fmt: skip
    # A confidential VM relocated by restart: an SNP guest needs SNP nodes (KubeVirt selects
    # kubevirt.io/sev-snp). They gain trust only now, so `mover` (placed on the cheapest class
    # with a verified node) stayed a HyperWall VM.
    trust.set(S1, "sev-snp")
    trust.set(S2, "sev-snp")
    sev = vm_manifest("confidential", launch_security={"snp": {}})["spec"]
    admin.create(
        path,
        {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": "confidential"},
         "spec": {"security": VM_B, "template": sev, "relocation": {"restartAllowed": True}}},
    )  # fmt: skip
    for name in ("legacy", "confidential"):
        _ready(admin, TEAM_A, name)
    # The template changes: the VM's spec is replaced.
    admin.json_patch(
        f"{path}/mover",
        [
            {
                "op": "replace",
                "path": "/spec/template/template/spec/domain/memory/guest",
                "value": "2Gi",
            }
        ],
    )
    nodes = {n: _svm(admin, TEAM_A, n)["status"]["nodeName"] for n in ("mover", "confidential")}
    revoked = {nodes["mover"], nodes["confidential"]}
    keep = [n for n in (X, Y, Z) if n not in revoked]
    kept_snp = {n: ("sev-snp",) for n in (S1, S2) if n not in revoked}
    trust.baseline({**{n: ("hyperwall",) for n in keep}, **kept_snp})
    # Ready alone may still be the pre-revocation status; wait for the move itself.
    wait_for(
        lambda: _svm(admin, TEAM_A, "mover"),
        lambda o: (
            (condition(o, "Ready") or {}).get("status") == "True"
            and o.get("status", {}).get("nodeName") in keep
        ),
        f"SecureVM {TEAM_A}/mover Ready on one of {keep}",
        60,
    )
    _ready(admin, TEAM_A, "confidential")
    assert _svm(admin, TEAM_A, "mover")["status"]["nodeName"] in keep
    # Fail-closed Stop: no compliant node left for a VM whose deadline passes.
    admin.create(
        path,
        securevm("stopper", {"options": ["Basic"]},
                 relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 1}}),
    )  # fmt: skip
    stopper_node = _ready(admin, TEAM_A, "stopper")["status"]["nodeName"]
    trust.set(stopper_node)
    for other in (X, Y, Z, S1, S2):
        if other != stopper_node:
            trust.set(other)
    wait_for(
        lambda: admin.get(resource_path(KV, "virtualmachines", TEAM_A, "stopper")),
        lambda vm: vm["spec"].get("runStrategy") == "Halted",
        "fail-closed Stop to halt the VM",
        60,
    )
    del src
    username = f"system:serviceaccount:{RELEASE_NS}:{chart.operator_sa}"
    used, refused = _used(bed, username)
    granted = _role_grants(chart)
    unjustified = sorted(granted - set(GRANT_REASONS))
    unused = sorted(
        k for k in granted if k not in used and GRANT_REASONS.get(k, ("", True))[1] is True
    )
    not_granted = sorted(used - granted)
    record(
        "5",
        "operator as the chart's ServiceAccount: audit of what it used",
        len(used),
        f"{len(refused)} refused requests; {len(granted)} grants, "
        f"{len(granted & used)} used in the scenario, unused: {unused or 'none'}",
        used=sorted("/".join(k) for k in used),
        granted_not_exercised={
            "/".join(k): GRANT_REASONS[k][1] for k in granted - used if k in GRANT_REASONS
        },
    )
    assert not refused, "the operator was refused:\n" + "\n".join(refused[:10])
    assert not not_granted, f"used without a grant (impossible unless refused): {not_granted}"
    assert not unjustified, f"grants without a reason in GRANT_REASONS: {unjustified}"
    assert not unused, f"granted, said to be exercised, but unused: {unused}"


def test_the_operator_reads_the_renewals_config_map_and_no_other(
    admin: KubeApi, chart: Chart, operator_kubeconfig: Path
):
    """The operator's token reads the verifier's renewals ConfigMap by name (get, and the list
    and watch its informer sends with a metadata.name field selector), and no other ConfigMap:
    no list of the namespace, no other name, no write."""
    ns, name = chart.renewals
    configmaps = resource_path("v1", "configmaps", ns)
    renewals = resource_path("v1", "configmaps", ns, name)
    if admin.get_or_none(renewals) is None:  # no verifier runs here: it would create it
        admin.create(configmaps, {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": name, "namespace": ns},
                                  "data": {RENEWALS_KEY: '{"renewals": {}}'}})  # fmt: skip
    op = KubeApi(str(operator_kubeconfig))
    by_name = f"metadata.name={name}"
    assert op.get(renewals)["metadata"]["name"] == name
    listed = op.list(configmaps, field_selector=by_name)
    assert [o["metadata"]["name"] for o in listed["items"]] == [name]
    stream = op.watch(
        configmaps, listed["metadata"]["resourceVersion"], timeout_seconds=1, field_selector=by_name
    )
    event = next(stream, None)  # authorised (a 403 raises); an event only on a change
    stream.close()
    assert event is None or event["type"] in ("ADDED", "MODIFIED", "BOOKMARK"), event
    other = resource_path("v1", "configmaps", ns, "kube-root-ca.crt")
    denied = {
        "list the namespace's ConfigMaps": lambda: op.list(configmaps),
        "get another ConfigMap": lambda: op.get(other),
        "list ConfigMaps cluster-wide": lambda: op.list(resource_path("v1", "configmaps")),
        "update the renewals": lambda: op.replace(renewals, op.get(renewals)),
        "delete the renewals": lambda: op.delete(renewals),
    }
    wrong = []
    for what, call in denied.items():
        try:
            call()
            wrong.append(f"{what}: allowed")
        except ApiError as err:
            if err.status != 403:
                wrong.append(f"{what}: HTTP {err.status}")
    record(
        "5",
        "operator vs ConfigMaps: only the verifier's renewals, read only, by name",
        len(denied),
        f"{len(denied) - len(wrong)} of {len(denied)} refused with 403; get, list and watch "
        "by name allowed",
    )
    assert not wrong, "\n".join(wrong)


# --- the trust monitor's manifests vs the chart ---------------------------------------------------


def _rules(role: JsonObj) -> set[tuple[str, str, str, str]]:
    return {
        (g, r, v, ",".join(sorted(rule.get("resourceNames", []))))
        for rule in role.get("rules", [])
        for g in rule.get("apiGroups", [])
        for r in rule.get("resources", [])
        for v in rule.get("verbs", [])
    }


def _policies(objs: list[JsonObj]) -> dict[str, JsonObj]:
    """Each ValidatingAdmissionPolicy's checks, keyed by the policy's role (name suffix)."""
    out = {}
    for o in objs:
        if o["kind"] != "ValidatingAdmissionPolicy":
            continue
        spec = o["spec"]
        suffix = o["metadata"]["name"].split("-", 1)[1]
        out[suffix] = {
            "validations": [v["expression"] for v in spec.get("validations", [])],
            "matchResources": spec.get("matchConstraints", {}).get("resourceRules"),
            "failurePolicy": spec.get("failurePolicy"),
        }
    return out


def test_the_trust_monitors_manifests_agree_with_the_chart(chart: Chart):
    theirs = verifier_rbac.manifests(RELEASE_NS)
    differences = []
    for component in ("verifier", "node-agent"):
        mine = next(
            o for o in chart.objects if o["kind"] == "ClusterRole"
            and o["metadata"]["name"] == f"{RELEASE}-{component}"
        )  # fmt: skip
        other = next(
            o for o in theirs if o["kind"] == "ClusterRole"
            and o["metadata"]["name"].endswith(component)
        )  # fmt: skip
        if _rules(mine) != _rules(other):
            differences.append(
                f"{component} ClusterRole: chart only {_rules(mine) - _rules(other)}, "
                f"trust monitor only {_rules(other) - _rules(mine)}"
            )
    p_chart, p_theirs = _policies(chart.objects), _policies(theirs)
    differences += [
        f"policy {k}: chart {p_chart.get(k)} vs trust monitor {p_theirs.get(k)}"
        for k in sorted(set(p_chart) | set(p_theirs))
        if p_chart.get(k) != p_theirs.get(k)
    ]
    record(
        "5",
        "chart RBAC/VAP vs the trust monitor's manifests",
        2 + len(set(p_chart) | set(p_theirs)),
        "identical" if not differences else f"{len(differences)} differences",
        differences=differences,
    )
    assert not differences, "\n".join(differences)


def test_an_agent_cannot_write_its_verdict_through_the_main_resource(
    bed: PrivateBed, admin: KubeApi, chart: Chart
):
    # A node-bound agent token, as the DaemonSet's pods get (bound to a pod on node X).
    agent_sa = next(
        o["metadata"]["name"]
        for o in chart.objects
        if o["kind"] == "ServiceAccount" and "node-agent" in o["metadata"]["name"]
    )
    pod = admin.create(
        resource_path("v1", "pods", RELEASE_NS),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{uuid.uuid4().hex[:5]}"},
         "spec": {"nodeName": X, "serviceAccountName": agent_sa,
                  "containers": [{"name": "c", "image": "example.invalid/none:0"}]}},
    )  # fmt: skip
    token = admin.create(
        resource_path("v1", "serviceaccounts", RELEASE_NS, agent_sa, "token"),
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                     "name": pod["metadata"]["name"],
                                     "uid": pod["metadata"]["uid"]}}},
    )["status"]["token"]  # fmt: skip
    agent = KubeApi(
        token_kubeconfig(
            bed.cluster.state_dir / "agent.kubeconfig",
            bed.cluster.server,
            bed.cluster.pki.ca.cert.read_bytes(),
            agent_sa,
            token,
        )
    )
    natt = resource_path(SOD, "nodeattestations")
    forged_status = {"verifiedProfiles": ["hyperwall"]}
    created = wait_for(
        lambda: _attempt_create(agent, natt, X, forged_status),
        lambda got: got is not None,
        "the agent's first write (RBAC and the policy in effect)",
        30,
    )
    assert not (created.get("status") or {}).get("verifiedProfiles"), created
    own = agent.get(f"{natt}/{X}")
    own["status"] = forged_status
    stored = agent.request("PUT", f"{natt}/{X}", body=own)
    assert not (stored.get("status") or {}).get("verifiedProfiles"), stored
    assert not (admin.get(f"{natt}/{X}").get("status") or {}).get("verifiedProfiles")
    assert _attempt(agent, "PATCH", f"{natt}/{X}/status", {"status": forged_status}) == 403
    record(
        "6",
        "agent writes its own verdict through the main resource (create, update) and /status",
        3,
        "status dropped on create and update (status subresource), /status refused 403",
    )


def _attempt_create(api: KubeApi, path: str, name: str, status: JsonObj) -> JsonObj | None:
    try:
        return api.create(
            path,
            {"apiVersion": SOD, "kind": "NodeAttestation", "metadata": {"name": name},
             "spec": {}, "status": status},
        )  # fmt: skip
    except ApiError as err:
        if err.status == 409:
            return api.get(f"{path}/{name}")
        if err.status == 403 and "cannot" in err.message:
            return None  # RBAC not yet in effect
        raise
