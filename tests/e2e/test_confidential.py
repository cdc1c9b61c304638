"""Confidential profiles make the VM confidential (issue 14), on real virt-api/virt-controller
v1.9.0 with the virt-handler player.

Covers: VM-B on an SNP-only fleet gets `launchSecurity.snp` (virt-api admits it behind the
test bed's feature gates), its launcher pod carries KubeVirt's `kubevirt.io/sev-snp` selector,
its VMI is `LiveMigratable=False`; losing its node's trust restarts it on the other SNP node
as a new VMI (never a migration) when restarts are allowed, and flags it `NonMigratable` when
not; a template with `launchSecurity.tdx` waits for a TDX node, never an SNP one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from sod_testbed.kubeapi import KubeApi

from tests.e2e.harness import Kube, condition, wait_for
from tests.e2e.operator_run import (
    SOD,
    OperatorProcess,
    Trust,
    install_catalog,
    remove_catalog,
    securevm,
)

VM_B = {
    "options": ["Basic", "HypervisorProtection"],
    "properties": ["Confidentiality", "Integrity"],
}
SNP_NODES = ("sev-snp-1", "sev-snp-2")
CONFIDENTIAL_NODES = (*SNP_NODES, "tdx-1")
RESTARTS = {"restartAllowed": True, "failClosed": {"action": "Alert", "deadlineSeconds": 300}}


@pytest.fixture
def snp_fleet(kube_api: KubeApi) -> Iterator[Trust]:
    """Only the SNP nodes are verified (for sev-snp); the tdx node has no verified profile."""
    install_catalog(kube_api)
    trust = Trust(kube_api)
    trust.baseline({})
    for node in SNP_NODES:
        trust.set(node, "sev-snp")
    trust.set("tdx-1")
    yield trust
    for node in CONFIDENTIAL_NODES:
        trust.set(node)
    remove_catalog(kube_api)


def svm(kube: Kube, name: str) -> dict[str, Any]:
    obj = kube.get("securevms", name, api_version=SOD)
    assert obj is not None
    return obj


def wait_condition(
    kube: Kube, name: str, ctype: str, status: str, timeout: float = 90
) -> dict[str, Any]:
    return wait_for(
        lambda: svm(kube, name),
        lambda o: (condition(o, ctype) or {}).get("status") == status,
        f"SecureVM {name} {ctype}={status}",
        timeout,
    )


def ready_on(kube: Kube, name: str, nodes: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
    return wait_for(
        lambda: svm(kube, name),
        lambda o: (
            (condition(o, "Ready") or {}).get("status") == "True"
            and o["status"].get("nodeName") in nodes
        ),
        f"SecureVM {name} Ready on one of {nodes}",
        timeout,
    )


def live_migratable(kube: Kube, name: str) -> str | None:
    vmi = kube.vmi(name) or {}
    return (condition(vmi, "LiveMigratable") or {}).get("status")


def migrations(kube: Kube, vm: str) -> list[dict[str, Any]]:
    items = kube.api.list(kube.path("virtualmachineinstancemigrations"))["items"]
    return [m for m in items if m["spec"]["vmiName"] == vm]


def test_vm_b_on_an_snp_fleet_is_an_snp_guest_and_restarts_onto_the_other_snp_node(
    snp_fleet: Trust, operator: OperatorProcess, kube: Kube
):
    operator.start()
    kube.create("securevms", securevm("vm-b", VM_B, relocation=RESTARTS), api_version=SOD)
    placed = ready_on(kube, "vm-b", SNP_NODES)
    assert placed["status"]["nodeProfile"] == "sev-snp"
    assert placed["status"]["placementClass"]["profiles"] == ["sev-snp"]
    vm = kube.vm("vm-b")
    assert vm is not None
    assert vm["spec"]["template"]["spec"]["domain"]["launchSecurity"] == {"snp": {}}
    vmi = kube.vmi("vm-b")
    assert vmi is not None
    assert vmi["spec"]["domain"]["launchSecurity"] == {"snp": {}}
    assert live_migratable(kube, "vm-b") == "False"
    (pod,) = [p for p in kube.launcher_pods("vm-b") if p["status"].get("phase") == "Running"]
    assert pod["spec"]["nodeSelector"].get("kubevirt.io/sev-snp") == "true"

    first_node, first_uid = placed["status"]["nodeName"], vmi["metadata"]["uid"]
    other = next(n for n in SNP_NODES if n != first_node)
    snp_fleet.set(first_node)  # the node breaks: its sev-snp verdict is withdrawn
    moved = ready_on(kube, "vm-b", (other,), timeout=180)
    assert moved["status"]["nodeProfile"] == "sev-snp"
    after = kube.vmi("vm-b")
    assert after is not None
    assert after["metadata"]["uid"] != first_uid  # a new instance: restarted, not migrated
    assert after["spec"]["domain"]["launchSecurity"] == {"snp": {}}
    assert migrations(kube, "vm-b") == []


def test_without_restarts_a_confidential_vm_is_flagged_non_migratable(
    snp_fleet: Trust, operator: OperatorProcess, kube: Kube
):
    operator.start()
    kube.create("securevms", securevm("vm-b", VM_B), api_version=SOD)
    placed = ready_on(kube, "vm-b", SNP_NODES)
    wait_for(lambda: live_migratable(kube, "vm-b"), lambda s: s == "False", "LiveMigratable", 30)
    node, uid = placed["status"]["nodeName"], (kube.vmi("vm-b") or {})["metadata"]["uid"]
    snp_fleet.set(node)
    flagged = wait_for(
        lambda: svm(kube, "vm-b"),
        lambda o: "restartAllowed" in (condition(o, "Relocating") or {}).get("message", ""),
        "vm-b flagged: relocation needs restartAllowed",
        90,
    )
    assert (condition(flagged, "NonMigratable") or {}).get("status") == "True"
    assert (condition(flagged, "Compliant") or {}).get("status") == "False"
    assert migrations(kube, "vm-b") == []
    assert (kube.vmi("vm-b") or {})["metadata"]["uid"] == uid  # never restarted


def test_a_tdx_template_never_lands_on_an_snp_node(
    snp_fleet: Trust, operator: OperatorProcess, kube: Kube
):
    operator.start()
    body = securevm("vm-t", VM_B)
    template = copy.deepcopy(body["spec"]["template"])
    domain = template["template"]["spec"]["domain"]
    domain["launchSecurity"] = {"tdx": {}}
    domain["firmware"] = {"bootloader": {"efi": {"secureBoot": False}}}
    body["spec"]["template"] = template
    kube.create("securevms", body, api_version=SOD)
    # Only the tdx class fits the template: the VM waits for a TDX node (SNP nodes are there).
    pending = wait_condition(kube, "vm-t", "Pending", "True")
    assert pending["status"]["placementClass"]["profiles"] == ["tdx"]
    vm = wait_for(lambda: kube.vm("vm-t"), bool, "VirtualMachine vm-t", 30)
    terms = vm["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert [t["matchExpressions"][-1]["key"] for t in terms] == [
        "sod.node-restriction.kubernetes.io/profile.tdx"
    ]
    assert (kube.vmi("vm-t") or {}).get("status", {}).get("nodeName") is None
    # Once the TDX node is verified the VM is placed there, and only there.
    snp_fleet.set("tdx-1", "tdx")
    placed = ready_on(kube, "vm-t", ("tdx-1",))
    assert placed["status"]["nodeProfile"] == "tdx"


def test_an_ordinary_vm_on_an_snp_node_is_never_compliant(
    snp_fleet: Trust, operator: OperatorProcess, kube: Kube
):
    # A tenant's own VM, pinned to an SNP node, without launchSecurity: an ordinary guest.
    template = securevm("x", VM_B)["spec"]["template"]
    template["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": SNP_NODES[0]}
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "plain"}}
    kube.create("virtualmachines", {**vm, "spec": template})
    kube.wait_vmi_phase("plain", "Running", timeout=60)
    operator.start()
    kube.create(
        "securevms",
        {
            "apiVersion": SOD,
            "kind": "SecureVM",
            "metadata": {"name": "plain"},
            "spec": {"security": VM_B, "vmRef": {"name": "plain"}},
        },
        api_version=SOD,
    )
    seen: list[str] = []

    def compliant(obj: dict[str, Any]) -> bool:
        c = condition(obj, "Compliant") or {}
        seen.append(c.get("status", ""))
        return c.get("status") == "False" and "launchSecurity.snp" in c.get("message", "")

    wait_for(lambda: svm(kube, "plain"), compliant, "plain: Compliant=False naming snp", 90)
    assert "True" not in seen
    # The operator rendered the profile's settings into the VM; the running guest lacks them.
    wait_for(
        lambda: kube.vm("plain"),
        lambda v: (
            v is not None
            and v["spec"]["template"]["spec"]["domain"].get("launchSecurity") == {"snp": {}}
        ),
        "VM plain carries launchSecurity.snp",
        30,
    )
    assert (kube.vmi("plain") or {})["spec"]["domain"].get("launchSecurity") is None
