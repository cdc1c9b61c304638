"""A tenant's attacks on VM ownership and placement (issue 19 items 1, 2 and 4).

The tenant `alice` acts by impersonation with what a real cluster gives it: `edit` in `team-a`,
the chart's SecureVM rules aggregated into `edit`, and KubeVirt v1.9.0's own `kubevirt.io:edit`
(full rights on VMs and VMIs, read on migrations), exactly as KubeVirt's code generates it
(tools/kubevirt writes KubeVirt's RBAC into the cache; the test bed installs all of it). The
operator watches `team-a` and re-checks every SecureVM only every 600 s here, so what it does
within the waits below comes from watch events, not from the periodic pass. Attacks:

* **a conflicting SecureVM** (`shadow`, `vmRef` to `web`'s VM) followed by an affinity edit to a
  plain node and a VMI restart: `web` keeps reacting, never claims compliance on the plain node,
  ends Compliant on a HyperWall node; `shadow` shows VirtualMachineConflict with no NODE or
  PROFILE; after `shadow` is deleted `web` still relocates on a revocation;
* **a tenant-written VMI `status.nodeName`** (VMIs have no status subresource): an adopted VM on a
  plain node stays non-compliant; real virt-api's mutating webhook restores the status a
  non-KubeVirt user wrote, and where a forgery sticks the operator names the disagreement
  (before the fix, it turned Compliant);
* **nodeSelector**: that adopted VM is pinned to the plain node by `nodeSelector`: no migration
  is created (its target pod could never be scheduled), NoCompliantNode instead;
* **an affinity edit during a migration**: reverted; the VMI never carries the tenant's affinity;
* **GitOps**: a second field manager server-side applies the adopted VM's manifest; without the
  affinity it owns nothing the operator writes (no conflict); with it, the apiserver reports
  the conflict docs/OPERATOR.md says to avoid (ignore-differences for that field).

A private bed (`tests.reliability.bed`): two HyperWall nodes and a plain one, real virt-api and
virt-controller, the virt-handler player; the nodes' trust labels are set by the test (no
trust monitor: these attacks are on ownership and placement, not on evidence).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sod_testbed.binaries import find_binaries
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.nodes import parse_nodes

from tests.chart.helmcli import VALUES_DIR, Helm, find_helm, parse_rendered
from tests.e2e.harness import condition, vm_manifest, vmim_manifest, wait_for
from tests.e2e.operator_run import (
    OperatorProcess,
    Trust,
    install_catalog,
    securevm,
    stopped_afterwards,
)
from tests.reliability.bed import As, PrivateBed
from tests.reliability.figures import record

RELIABILITY_ITEM = "7"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

SOD = "sod.dev/v1alpha1"
KV = "kubevirt.io/v1"
RBAC = "rbac.authorization.k8s.io/v1"
NS = "team-a"
HW1, HW2, PLAIN = "hyperwall-1", "hyperwall-2", "plain-1"
VM_B = {"options": ["Basic", "HypervisorProtection"]}
KUBEVIRT_EDIT = "kubevirt.io:edit"
HOSTNAME = "kubernetes.io/hostname"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def _kubevirt_role(name: str) -> JsonObj:
    """A ClusterRole from KubeVirt's own RBAC, as generated from its code into the cache."""
    items = json.loads(find_binaries().kubevirt_rbac.read_text())["items"]
    return next(i for i in items if i["kind"] == "ClusterRole" and i["metadata"]["name"] == name)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBed]:
    bed = PrivateBed(
        tmp_path_factory.mktemp("tenant-attacks-bed"),
        parse_nodes("hyperwall=2,plain=1"),
        PlayerConfig(time_scale=0.05, resync_seconds=2.0),
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
    bed.create_namespace(NS)
    trust = Trust(api)
    trust.set(HW1, "hyperwall")
    trust.set(HW2, "hyperwall")
    trust.set(PLAIN)
    return api


@pytest.fixture(scope="module")
def alice(bed: PrivateBed, admin: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> KubeApi:
    """`edit` in team-a, plus what aggregates into it: the chart's tenant rules and KubeVirt's."""
    helm = Helm(find_helm(), tmp_path_factory.mktemp("helm-home"))
    rendered = [r.obj for r in parse_rendered(helm.template(VALUES_DIR / "production.yaml"))]
    aggregated = [
        o for o in rendered
        if o["kind"] == "ClusterRole"
        and "rbac.authorization.k8s.io/aggregate-to-edit" in (o["metadata"].get("labels") or {})
    ]  # fmt: skip
    assert aggregated, "the chart aggregates no rules into `edit`"
    for role in [*aggregated, _kubevirt_role(KUBEVIRT_EDIT)]:
        path = resource_path(RBAC, "clusterroles", name=role["metadata"]["name"])
        admin.apply(path, role, "reliability")
    admin.create(
        resource_path(RBAC, "rolebindings", namespace=NS),
        {
            "apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "alice-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "alice"}],
        },
    )  # fmt: skip
    tenant = As(bed.cluster.kubeconfig, "alice")

    def can(plural: str, api_version: str, body: JsonObj) -> bool:
        try:
            tenant.request(
                "POST", resource_path(api_version, plural, NS), query={"dryRun": "All"}, body=body
            )
        except ApiError:
            return False
        return True

    # The controller-manager aggregates the rules into `edit` asynchronously.
    wait_for(
        lambda: (
            can("securevms", SOD, securevm("probe", {"options": ["Basic"]})),
            can("virtualmachines", KV, vm_manifest("probe")),
        ),
        lambda got: got == (True, True),
        "the chart's and KubeVirt's rules to reach `edit`",
    )
    return tenant


@pytest.fixture(scope="module")
def operator(
    bed: PrivateBed, admin: KubeApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    tmp = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(
        bed.cluster.kubeconfig, NS, tmp / "operator.log", "--resync-seconds", "600"
    ).start()
    yield from stopped_afterwards(op)


# --- helpers ----------------------------------------------------------------------------------


def _adopting(name: str, security: JsonObj, vm: str) -> JsonObj:
    body = securevm(name, security)
    del body["spec"]["template"]
    body["spec"]["vmRef"] = {"name": vm}
    return body


def _path(plural: str, name: str | None = None, api_version: str = KV) -> str:
    return resource_path(api_version, plural, NS, name)


def _svm(api: KubeApi, name: str) -> JsonObj:
    return api.get(_path("securevms", name, SOD))


def _vmi(api: KubeApi, name: str) -> JsonObj | None:
    return api.get_or_none(_path("virtualmachineinstances", name))


def _state(obj: JsonObj, ctype: str) -> tuple[str, str]:
    c = condition(obj, ctype) or {}
    return (str(c.get("status", "")), str(c.get("reason", "")))


def _compliant_on(api: KubeApi, name: str, nodes: tuple[str, ...]) -> JsonObj:
    return wait_for(
        lambda: _svm(api, name),
        lambda o: (
            _state(o, "Compliant")[0] == "True" and (o.get("status") or {}).get("nodeName") in nodes
        ),
        f"SecureVM {name} Compliant on one of {nodes}",
        60,
    )


def _vmi_node(api: KubeApi, name: str) -> str | None:
    vmi = _vmi(api, name)
    return ((vmi or {}).get("metadata", {}).get("labels") or {}).get("kubevirt.io/nodeName")


def _watch_claims(
    api: KubeApi, name: str, until: Callable[[JsonObj], bool], what: str, timeout: float = 60
) -> list[tuple[str | None, str, str | None]]:
    """Sample (VMI node, Compliant, claimed node) until `until(SecureVM)`: every sample where
    the SecureVM claimed compliance while its VMI ran on the plain node is a lie."""
    samples: list[tuple[str | None, str, str | None]] = []

    def fetch() -> JsonObj:
        svm = _svm(api, name)
        samples.append(
            (
                _vmi_node(api, name),
                _state(svm, "Compliant")[0],
                (svm.get("status") or {}).get("nodeName"),
            )
        )
        return svm

    wait_for(fetch, until, what, timeout)
    return samples


def _lies(samples: list[tuple[str | None, str, str | None]]) -> list[Any]:
    return [s for s in samples if s[0] == PLAIN and s[1] == "True"]


# --- 1. one VM, one owner -------------------------------------------------------------------


def test_a_conflicting_securevm_never_silences_the_owner(
    admin: KubeApi, alice: KubeApi, operator: OperatorProcess
):
    alice.create(_path("securevms", api_version=SOD), securevm("web", VM_B))
    first = _compliant_on(admin, "web", (HW1, HW2))["status"]["nodeName"]
    alice.create(
        _path("securevms", api_version=SOD),
        _adopting("shadow", {"options": ["Basic"]}, "web"),
    )
    shadow = wait_for(
        lambda: _svm(admin, "shadow"),
        lambda o: _state(o, "Ready") == ("False", "VirtualMachineConflict"),
        "shadow to report VirtualMachineConflict",
    )
    assert not (shadow.get("status") or {}).get("nodeName")
    assert not (shadow.get("status") or {}).get("nodeProfile")
    assert _state(shadow, "Compliant")[0] == "Unknown"

    # The attack: the VM's affinity to the plain node, then a restart of its instance.
    plain_only = {
        "nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [PLAIN]}]}
        ]}}
    }  # fmt: skip
    alice.merge_patch(
        _path("virtualmachines", "web"), {"spec": {"template": {"spec": {"affinity": plain_only}}}}
    )
    old_uid = (_vmi(admin, "web") or {})["metadata"]["uid"]
    alice.delete(_path("virtualmachineinstances", "web"))
    samples = _watch_claims(
        admin,
        "web",
        lambda o: (
            _state(o, "Compliant")[0] == "True"
            and (_vmi(admin, "web") or {}).get("metadata", {}).get("uid") not in (None, old_uid)
            and (o.get("status") or {}).get("nodeName") in (HW1, HW2)
            and _vmi_node(admin, "web") == (o.get("status") or {}).get("nodeName")
        ),
        "web Compliant again on a new instance on a HyperWall node",
    )
    assert not _lies(samples), f"web claimed compliance on {PLAIN}: {_lies(samples)}"
    vm = admin.get(_path("virtualmachines", "web"))
    terms = vm["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][REQUIRED]
    assert "sod.node-restriction.kubernetes.io" in str(terms), "the tenant's affinity stayed"

    # Removing a claimant never drops the owner: web still relocates on a revocation.
    alice.delete(_path("securevms", "shadow", SOD))
    time.sleep(1)  # the deletion reaches the operator's world
    here = _svm(admin, "web")["status"]["nodeName"]
    other = HW2 if here == HW1 else HW1
    Trust(admin).set(here)
    try:
        _compliant_on(admin, "web", (other,))
    finally:
        Trust(admin).set(here, "hyperwall")
    record(
        "7",
        "conflicting SecureVM (vmRef) + affinity edit to a plain node + VMI restart (issue 19.1)",
        len(samples),
        f"owner kept reacting: never Compliant on {PLAIN} in {len(samples)} samples, back on a "
        "HyperWall node; the claimant showed VirtualMachineConflict with no node/profile; after "
        "it was deleted the owner relocated on a revocation",
        first_node=first,
        relocated_to=other,
    )


# --- 2. + 4. a forged VMI status; a VM pinned by nodeSelector ---------------------------------


def test_a_tenant_written_vmi_status_changes_nothing(
    admin: KubeApi, alice: KubeApi, operator: OperatorProcess
):
    legacy = vm_manifest("legacy", node_selector={HOSTNAME: PLAIN})
    alice.create(_path("virtualmachines"), legacy)
    wait_for(lambda: _vmi_node(admin, "legacy"), lambda n: n == PLAIN, "legacy on the plain node")
    alice.create(_path("securevms", api_version=SOD), _adopting("wrapper", VM_B, "legacy"))
    svm = wait_for(
        lambda: _svm(admin, "wrapper"),
        lambda o: (
            _state(o, "Compliant") == ("False", "NodeNotCompliant")
            and _state(o, "Relocating") == ("False", "NoCompliantNode")
        ),
        "wrapper NodeNotCompliant, and NoCompliantNode (the nodeSelector pins it)",
    )
    assert svm["status"].get("eligibleNodes") == 0

    # The attack: the tenant writes the VMI's status (no status subresource on VMIs).
    alice.merge_patch(_path("virtualmachineinstances", "legacy"), {"status": {"nodeName": HW1}})
    forged = (_vmi(admin, "legacy") or {}).get("status", {}).get("nodeName")
    if forged == PLAIN:
        # Real virt-api's VMI mutating webhook restores the status a non-KubeVirt user wrote
        # (pkg/virt-api/webhooks/mutating-webhook/mutators/vmi-mutator.go): the forgery never
        # reaches the object; the operator must simply stay where it was.
        samples = _watch_claims(admin, "wrapper", lambda o: True, "a sample after the write")
    else:
        # Where the forgery sticks, the operator compares it with what the tenant cannot write.
        samples = _watch_claims(
            admin,
            "wrapper",
            lambda o: "disputed" in ((condition(o, "Compliant") or {}).get("message") or ""),
            "wrapper to name the disagreement",
            30,
        )
    time.sleep(3)  # more events (the player's passes) must not change its mind
    samples += _watch_claims(admin, "wrapper", lambda o: True, "one more sample")
    after = _svm(admin, "wrapper")
    assert _state(after, "Compliant")[0] == "False", after["status"]
    assert after["status"].get("nodeName") == PLAIN
    assert not _lies(samples), _lies(samples)
    migrations = admin.list(_path("virtualmachineinstancemigrations"))["items"]
    doomed = [m["metadata"]["name"] for m in migrations if m["spec"]["vmiName"] == "legacy"]
    assert not doomed, f"migrations created for a VM pinned to {PLAIN}: {doomed}"
    message = (condition(after, "Compliant") or {}).get("message", "")
    record(
        "7",
        "tenant writes a VMI's status.nodeName (adopted VM on a plain node) (issue 19.2)",
        len(samples),
        "never Compliant, no migration"
        + (
            "; virt-api restored the VMI status"
            if forged == PLAIN
            else "; names the disagreement and the node the launcher pod runs on"
        ),
        forged_status=forged,
        message=message,
    )
    record(
        "7",
        "adopted VM pinned by nodeSelector to a plain node (issue 19.4)",
        1,
        "NoCompliantNode, eligible 0, no migration created",
    )


# --- 4. an affinity edit during a migration ---------------------------------------------------


def test_a_tenants_affinity_edit_during_a_migration_never_takes_effect(
    admin: KubeApi, alice: KubeApi, operator: OperatorProcess
):
    alice.create(_path("securevms", api_version=SOD), securevm("mover", VM_B))
    here = _compliant_on(admin, "mover", (HW1, HW2))["status"]["nodeName"]
    other = HW2 if here == HW1 else HW1
    ours = admin.get(_path("virtualmachines", "mover"))["spec"]["template"]["spec"]["affinity"]
    tenants = {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [PLAIN]}]}
    ]}}}  # fmt: skip
    # The platform team's own migration (the tenant may only read migrations).
    admin.create(
        _path("virtualmachineinstancemigrations"),
        vmim_manifest("platform-move", "mover", added_node_selector={HOSTNAME: other}),
    )
    wait_for(
        lambda: admin.get(_path("virtualmachineinstancemigrations", "platform-move")),
        lambda m: (m.get("status") or {}).get("phase") not in (None, "", "Pending"),
        "the migration to start",
    )
    alice.merge_patch(
        _path("virtualmachines", "mover"), {"spec": {"template": {"spec": {"affinity": tenants}}}}
    )
    seen: list[Any] = []

    def vmi_affinity() -> tuple[Any, Any, str]:
        vmi = _vmi(admin, "mover") or {}
        vm = admin.get(_path("virtualmachines", "mover"))
        mig = admin.get(_path("virtualmachineinstancemigrations", "platform-move"))
        seen.append((vmi.get("spec") or {}).get("affinity"))
        return (
            vm["spec"]["template"]["spec"].get("affinity"),
            seen[-1],
            (mig.get("status") or {}).get("phase", ""),
        )

    wait_for(
        vmi_affinity,
        lambda got: got[0] == ours and got[2] in ("Succeeded", "Failed"),
        "the VM's affinity reverted and the migration finished",
    )
    time.sleep(2)  # KubeVirt copies the VM template to the VMI after the migration
    vmi_affinity()
    assert all(a != tenants for a in seen), "the tenant's affinity reached the VMI"
    _compliant_on(admin, "mover", (HW1, HW2))
    record(
        "7",
        "tenant edits a VM's affinity during a migration (issue 19.4)",
        len(seen),
        "reverted; the VMI never carried the tenant's affinity",
    )


# --- 4. GitOps: a second field manager applying the adopted VM -------------------------------


def test_gitops_server_side_apply_of_an_adopted_vm(
    admin: KubeApi, alice: KubeApi, operator: OperatorProcess
):
    gitops = alice  # the GitOps controller, with the tenant's rights and its own field manager
    manifest = vm_manifest("gitops-vm")
    path = _path("virtualmachines", "gitops-vm")
    gitops.apply(path, manifest, "gitops", force=False)
    alice.create(_path("securevms", api_version=SOD), _adopting("gitops", VM_B, "gitops-vm"))
    vm = wait_for(
        lambda: admin.get(path),
        lambda o: "sod.node-restriction" in str(o["spec"]["template"]["spec"].get("affinity")),
        "the operator's affinity on the adopted VM",
    )
    ours = vm["spec"]["template"]["spec"]["affinity"]
    # Re-apply what Git holds (no affinity, as docs/OPERATOR.md says): no conflict, no drift.
    gitops.apply(path, manifest, "gitops", force=False)
    assert admin.get(path)["spec"]["template"]["spec"]["affinity"] == ours
    # Git claiming the affinity too: the apiserver reports the conflict with the operator.
    git_terms = [{"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [HW1, HW2]}]}]
    claiming = vm_manifest(
        "gitops-vm", affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": git_terms}}}
    )
    with pytest.raises(ApiError) as conflict:
        gitops.apply(path, claiming, "gitops", force=False)
    assert conflict.value.status == 409
    assert "sod-operator" in str(conflict.value)
    record(
        "7",
        "GitOps: server-side apply of an adopted VM by a second field manager (issue 19.4)",
        2,
        "without the affinity in Git: no conflict, affinity kept; with it: 409 naming sod-operator",
    )
