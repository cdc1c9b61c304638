"""The operator in the sandbox, telling the paper's story (issue 4, item 7).

Real apiserver, scheduler and CRDs (KubeVirt's own schemas validate what the operator writes);
real virt-api and virt-controller move the VMs, the virt-handler player plays the node side.
`sod-operator` runs as users run it: its console script,
in a subprocess, watching the test's namespace. Node trust is set with the verifier's label
keys (`operator_run.Trust`).

Covers: deployment onto satisfying nodes; trust revoked → live migration of the VM that lost
protection only; request raised → migration; Unsatisfiable with reasons; Pending then placed
when a node gains trust; a failed migration retried elsewhere; kill -9 and restart
mid-relocation without a duplicate migration; moving target defense within its interval.
Not covered: attestation itself (the verifier's tier), the Helm chart (tests/chart).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_testbed.kubeapi import KubeApi, resource_path

from tests.e2e.harness import Kube, condition, wait_for
from tests.e2e.operator_run import (
    SOD,
    OperatorProcess,
    Trust,
    install_catalog,
    metric_value,
    remove_catalog,
    securevm,
    stopped_afterwards,
)

VM_A = {"options": ["Basic"], "properties": ["Confidentiality", "Integrity"]}
VM_B = {
    "options": ["Basic", "HypervisorProtection"],
    "properties": ["Confidentiality", "Integrity"],
}
X, Y, Z = "hyperwall-1", "hyperwall-2", "datasafe-1"
HOLD = "sim.sod.dev/hold-migration"
SODCTL = [str(Path(sys.executable).with_name("sodctl"))]
FORCE_FAILURE = "kubevirt.io/func-test-force-launcher-migration-failure"


@pytest.fixture(scope="module")
def catalog(kube_api: KubeApi) -> Iterator[None]:
    install_catalog(kube_api)
    yield
    # Leave the shared cluster as found: no catalog, no trust labels.
    remove_catalog(kube_api)
    Trust(kube_api).baseline({})


@pytest.fixture
def trust(kube_api: KubeApi, catalog: None) -> Trust:
    return Trust(kube_api)


@pytest.fixture
def operator(
    kubeconfig: Path, namespace: str, tmp_path: Path, catalog: None
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    yield from stopped_afterwards(op)


class Tenant:
    """What a tenant does and sees: SecureVMs in one namespace."""

    def __init__(self, kube: Kube):
        self.kube = kube

    def create(self, name: str, security: dict[str, Any], **spec: Any) -> None:
        self.kube.create("securevms", securevm(name, security, **spec), api_version=SOD)

    def svm(self, name: str) -> dict[str, Any]:
        obj = self.kube.get("securevms", name, api_version=SOD)
        assert obj is not None, f"SecureVM {name} is gone"
        return obj

    def patch_security(self, name: str, security: dict[str, Any]) -> None:
        self.kube.api.json_patch(
            self.kube.path("securevms", name, SOD),
            [{"op": "replace", "path": "/spec/security", "value": security}],
        )

    def wait(
        self, name: str, ctype: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        def ok(obj: dict[str, Any]) -> bool:
            c = condition(obj, ctype)
            return (
                c is not None
                and c["status"] == status
                and (reason is None or c["reason"] == reason)
            )

        return wait_for(
            lambda: self.svm(name), ok, f"SecureVM {name} {ctype}={status} {reason or ''}", timeout
        )

    def wait_ready_on(
        self, name: str, node: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        obj = wait_for(
            lambda: self.svm(name),
            lambda o: settled(o) and (node is None or o["status"].get("nodeName") == node),
            f"SecureVM {name} Ready on {node or 'a compliant node'}",
            timeout,
        )
        return obj

    def migrations(self, vm: str) -> list[dict[str, Any]]:
        items = self.kube.api.list(self.kube.path("virtualmachineinstancemigrations"))["items"]
        return [m for m in items if m["spec"]["vmiName"] == vm]

    def annotate_vmi(self, vm: str, key: str, value: str | None) -> None:
        self.kube.api.merge_patch(
            self.kube.path("virtualmachineinstances", vm),
            {"metadata": {"annotations": {key: value}}},
        )


@pytest.fixture
def tenant(kube: Kube) -> Tenant:
    return Tenant(kube)


def settled(svm: dict[str, Any]) -> bool:
    """Ready, and no relocation still open: with KubeVirt the VMI reports the target node (the
    target virt-handler's acknowledgement) one write before the migration is `completed`, so a
    SecureVM can be Ready on its new node while its relocation record is still being closed."""
    return (condition(svm, "Ready") or {}).get("status") == "True" and (
        condition(svm, "Relocating") or {}
    ).get("status") != "True"


def node_of(tenant: Tenant, vm: str) -> str | None:
    vmi = tenant.kube.vmi(vm)
    return (vmi or {}).get("status", {}).get("nodeName")


def test_paper_story_deploy_revoke_and_raise(
    trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    # X protects from the hypervisor (HyperWall) and has a measured boot; nothing else is trusted.
    trust.baseline({X: ("hyperwall", "tpm-measured-boot")})
    operator.start()
    tenant.create("vm-a", VM_A)
    tenant.create("vm-b", VM_B)
    a = tenant.wait_ready_on("vm-a", X)
    b = tenant.wait_ready_on("vm-b", X)
    assert b["status"]["nodeProfile"] == "hyperwall"
    assert a["status"]["nodeProfile"] == "tpm-measured-boot"  # the cheapest sufficient class
    vm_b = tenant.kube.vm("vm-b")
    assert vm_b is not None
    assert vm_b["metadata"]["ownerReferences"][0]["kind"] == "SecureVM"
    terms = vm_b["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    keys = {t["matchExpressions"][0]["key"] for t in terms}
    # sev-snp and tdx satisfy VM-B too, but need launchSecurity: the operator places VM-B on
    # the class with a verified node (issue 14), here the profiles needing no VM settings.
    assert keys == {profile_label(p) for p in ("h-svm", "hyperwall")}

    # Y gains HyperWall; then X loses it (keeps its measured boot).
    trust.set(Y, "hyperwall")
    revoked = trust.set(X, "tpm-measured-boot")
    first = wait_for(lambda: tenant.migrations("vm-b"), bool, "a migration of vm-b", 30)
    seen = time.monotonic()
    print(f"reaction (label removed -> VMIM seen by the test): {1000 * (seen - revoked):.1f} ms")
    assert first[0]["metadata"]["labels"]["sod.dev/trigger"] == "TrustRevoked"
    b = tenant.wait_ready_on("vm-b", Y)
    assert b["status"]["history"][-1]["result"] == "Succeeded"
    assert b["status"]["history"][-1]["fromNode"] == X
    # VM-A is still protected where it is: it never moves.
    assert node_of(tenant, "vm-a") == X
    assert tenant.migrations("vm-a") == []
    assert len(tenant.migrations("vm-b")) == 1
    reaction = metric_value(
        operator.metrics(), "sod_reaction_seconds_sum", {"trigger": "TrustRevoked"}
    )
    print(f"operator's own reaction time (event observed -> VMIM created): {reaction}")

    # The tenant raises VM-A's request: X no longer satisfies it, Y does.
    tenant.patch_security("vm-a", VM_B)
    tenant.wait("vm-a", "Compliant", "False", "RequestRaised", timeout=30)
    a = tenant.wait_ready_on("vm-a", Y)
    assert a["status"]["nodeProfile"] == "hyperwall"
    (mig,) = tenant.migrations("vm-a")
    assert mig["metadata"]["labels"]["sod.dev/trigger"] == "RequestRaised"


def test_unsatisfiable_request_says_why(trust: Trust, operator: OperatorProcess, tenant: Tenant):
    trust.baseline({X: ("hyperwall",)})
    operator.start()
    tenant.create("no-such-server", {"options": ["HardwareProtection"], "scope": "FullVM"})
    obj = tenant.wait("no-such-server", "Unsatisfiable", "True", "NoSatisfyingProfile")
    gaps = {g["profile"]: g for g in obj["status"]["unmet"]}
    assert "hyperwall" in gaps
    assert {(c["entity"], c["property"]) for c in gaps["hyperwall"]["cells"]} == {
        ("Hardware", "Confidentiality"),
        ("Hardware", "Integrity"),
    }
    assert "hyperwall: Hardware Confidentiality" in condition(obj, "Unsatisfiable")["message"]
    assert (condition(obj, "Ready") or {})["status"] == "False"


def explain(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            *SODCTL,
            "explain",
            "svm",
            name,
            "-n",
            namespace,
            "--kubeconfig",
            str(kubeconfig),
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report: dict[str, Any] = json.loads(out)
    return report


def test_pending_until_a_node_gains_trust(
    kubeconfig: Path, trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",)})
    operator.start()
    # Protection from the cloud manager too: only SEV-SNP or TDX servers offer it.
    tenant.create(
        "confidential", {"options": ["Basic", "HypervisorProtection", "CloudManagerProtection"]}
    )
    obj = tenant.wait("confidential", "Pending", "True", "NoCompliantNode")
    assert obj["status"]["satisfyingProfiles"] == ["sev-snp", "tdx"]
    assert obj["status"]["eligibleNodes"] == 0
    assert node_of(tenant, "confidential") is None
    # What the tenant runs first when a VM is Pending:
    report = explain(kubeconfig, tenant.kube.ns, "confidential")
    assert report["qualifyingNodes"] == []
    lacks = {n["name"]: " | ".join(n["lacks"]) for n in report["nodes"]}
    assert "hyperwall: CloudManager Confidentiality: profile offers No" in lacks[X]
    assert "no verified profile" in lacks["plain-1"]
    # An SEV-SNP machine gains trust (a plain one could not run the SNP guest: KubeVirt's
    # kubevirt.io/sev-snp node selector, issue 14).
    trust.set("sev-snp-1", "sev-snp")
    obj = tenant.wait_ready_on("confidential", "sev-snp-1")
    assert obj["status"]["nodeProfile"] == "sev-snp"
    # `kubectl get secprof` counts the nodes on which each profile is verified.
    wait_for(
        lambda: tenant.kube.api.get(resource_path(SOD, "serversecurityprofiles", name="sev-snp")),
        lambda p: (p.get("status") or {}).get("verifiedNodes") == 1,
        "sev-snp to count one verified node",
        15,
    )
    report = explain(kubeconfig, tenant.kube.ns, "confidential")
    assert report["vmNode"] == "sev-snp-1"
    assert report["qualifyingNodes"] == ["sev-snp-1"]
    text = subprocess.run(
        [
            *SODCTL,
            "explain",
            "svm",
            "confidential",
            "-n",
            tenant.kube.ns,
            "--kubeconfig",
            str(kubeconfig),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "The VM runs on sev-snp-1: its verified profile sev-snp satisfies the request." in text


def _placed(tenant: Tenant, name: str) -> str:
    obj = tenant.wait_ready_on(name)
    node = obj["status"]["nodeName"]
    assert isinstance(node, str)
    return node


def test_failed_migration_is_retried_elsewhere(
    trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",), Y: ("hyperwall",), Z: ("hyperwall",)})
    operator.start()
    tenant.create("vm-b", VM_B)
    source = _placed(tenant, "vm-b")
    # KubeVirt's own failure injection: the migration fails at the end of pre-copy.
    tenant.annotate_vmi("vm-b", FORCE_FAILURE, "true")
    trust.set(source)
    failed = tenant.wait("vm-b", "RelocationFailed", "True", "MigrationFailed", timeout=60)
    tenant.annotate_vmi("vm-b", FORCE_FAILURE, None)
    first_target = failed["status"]["relocation"]["toNode"]
    assert first_target
    assert first_target != source
    assert failed["status"]["relocation"]["avoidNodes"] == [first_target]
    final = wait_for(
        lambda: tenant.svm("vm-b"),
        lambda o: settled(o) and o["status"].get("nodeName") not in (source, first_target),
        "vm-b Ready on the third node",
        60,
    )
    history = final["status"]["history"]
    assert [h["result"] for h in history] == ["Failed", "Succeeded"]
    assert [h["attempt"] for h in history] == [1, 2]
    migrations = sorted(tenant.migrations("vm-b"), key=lambda m: m["metadata"]["creationTimestamp"])
    assert len(migrations) == 2
    assert migrations[0]["status"]["phase"] == "Failed"
    steered = migrations[1]["spec"]["addedNodeSelector"]["kubernetes.io/hostname"]
    assert steered == final["status"]["nodeName"]
    assert (condition(final, "RelocationFailed") or {})["status"] == "False"


def test_operator_killed_mid_relocation_finishes_without_a_duplicate(
    trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",), Y: ("hyperwall",)})
    operator.start()
    tenant.create("vm-b", VM_B)
    source = _placed(tenant, "vm-b")
    target = Y if source == X else X
    tenant.annotate_vmi("vm-b", HOLD, "true")  # the played migration waits for us
    trust.set(source)
    (mig,) = wait_for(lambda: tenant.migrations("vm-b"), bool, "the migration of vm-b", 30)
    tenant.kube.wait_vmim_phase(mig["metadata"]["name"], "Running", timeout=30)
    operator.kill()
    operator.start()
    # The new process re-plans vm-b from the recorded status and the observed migration.
    tenant.wait("vm-b", "Relocating", "True", "Migrating", timeout=30)
    tenant.annotate_vmi("vm-b", HOLD, None)
    done = tenant.wait_ready_on("vm-b", target)
    assert [m["metadata"]["name"] for m in tenant.migrations("vm-b")] == [mig["metadata"]["name"]]
    assert done["status"]["history"][-1]["migrationName"] == mig["metadata"]["name"]
    assert done["status"]["relocationCount"] == 1


def test_moving_target_defense_moves_the_vm_within_its_interval(
    trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",), Y: ("hyperwall",)})
    operator.start()
    tenant.create("roaming", VM_B, movingTargetDefense={"intervalSeconds": 60, "jitterSeconds": 5})
    first = _placed(tenant, "roaming")
    due = tenant.svm("roaming")["status"]["nextMovingTargetTime"]
    moved = wait_for(
        lambda: tenant.svm("roaming"),
        lambda o: (
            bool(o["status"].get("history"))
            and o["status"].get("nodeName") != first
            and (condition(o, "Ready") or {}).get("status") == "True"
        ),
        "a moving-target move",
        120,
    )
    (record,) = moved["status"]["history"]
    assert record["trigger"] == "MovingTargetDefense"
    assert record["fromNode"] == first
    assert record["startTime"] >= due  # not before it was due (RFC 3339 UTC strings sort)
    assert moved["status"]["nextMovingTargetTime"] > record["startTime"]
    (mig,) = tenant.migrations("roaming")
    assert mig["metadata"]["labels"]["sod.dev/trigger"] == "MovingTargetDefense"


def test_two_replicas_never_both_act(
    kubeconfig: Path, namespace: str, tmp_path: Path, trust: Trust, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",), Y: ("hyperwall",)})
    first = OperatorProcess(kubeconfig, namespace, tmp_path / "a.log", "--identity", "replica-a")
    second = OperatorProcess(kubeconfig, namespace, tmp_path / "b.log", "--identity", "replica-b")
    try:
        first.start()
        second.spawn()
        lease_path = resource_path("coordination.k8s.io/v1", "leases", namespace, "sod-operator")
        wait_for(lambda: second.log(), lambda t: "waiting for Lease" in t, "replica-b to wait", 30)
        lease = tenant.kube.api.get(lease_path)
        assert lease["spec"]["holderIdentity"] == "replica-a"
        # A standby is alive (its liveness probe must not restart it while it waits).
        with urllib.request.urlopen(
            f"http://127.0.0.1:{second.liveness_port}/healthz", timeout=2
        ) as probe:
            assert probe.status == 200
        tenant.create("vm-b", VM_B)
        source = _placed(tenant, "vm-b")
        first.kill()  # no release: replica-b takes over when the Lease expires
        wait_for(
            lambda: tenant.kube.api.get(lease_path)["spec"]["holderIdentity"],
            lambda h: h == "replica-b",
            "replica-b to take the Lease",
            30,
        )
        trust.set(source)
        (mig,) = wait_for(lambda: tenant.migrations("vm-b"), bool, "replica-b to migrate vm-b", 60)
        assert mig["metadata"]["labels"]["sod.dev/trigger"] == "TrustRevoked"
        tenant.wait_ready_on("vm-b")
    finally:
        first.stop()
        second.stop()
        print(f"--- replica-a ---\n{first.log(3000)}\n--- replica-b ---\n{second.log(3000)}")


def test_a_clean_shutdown_hands_the_lease_over(
    kubeconfig: Path, namespace: str, tmp_path: Path, trust: Trust, tenant: Tenant
):
    """SIGTERM (what the kubelet sends on a rollout): exit 0 on its own, Lease released."""
    trust.baseline({X: ("hyperwall",)})
    first = OperatorProcess(kubeconfig, namespace, tmp_path / "a.log", "--identity", "replica-a")
    second = OperatorProcess(kubeconfig, namespace, tmp_path / "b.log", "--identity", "replica-b")
    lease_path = resource_path("coordination.k8s.io/v1", "leases", namespace, "sod-operator")
    try:
        first.start()
        second.spawn()
        wait_for(lambda: second.log(), lambda t: "waiting for Lease" in t, "replica-b to wait", 30)
        # stop() escalates to SIGKILL after 20 s; a -9 here means the process hung on SIGTERM.
        assert first.stop() == 0, first.log()
        holder = tenant.kube.api.get(lease_path)["spec"].get("holderIdentity")
        assert holder in ("", "replica-b"), holder
        tenant.create("vm-b", VM_B)
        tenant.wait_ready_on("vm-b")
        assert tenant.kube.api.get(lease_path)["spec"]["holderIdentity"] == "replica-b"
    finally:
        first.stop()
        second.stop()
        print(f"--- replica-a ---\n{first.log(3000)}\n--- replica-b ---\n{second.log(3000)}")


def test_new_profile_makes_an_unsatisfiable_request_placeable(
    kube_api: KubeApi, trust: Trust, operator: OperatorProcess, tenant: Tenant
):
    trust.baseline({X: ("hyperwall",)})
    operator.start()
    tenant.create("hw-only", {"options": ["HardwareProtection"]})
    tenant.wait("hw-only", "Unsatisfiable", "True", "NoSatisfyingProfile")
    # The platform team adds an architecture that protects from the hardware, and a node has it.
    name = f"e2e-{tenant.kube.ns[-5:]}"
    path = resource_path(SOD, "serversecurityprofiles", name=name)
    profile = {
        "apiVersion": SOD,
        "kind": "ServerSecurityProfile",
        "metadata": {"name": name},
        "spec": {
            "scope": "FullVM",
            "protections": [{"entity": "Hardware", "confidentiality": "Yes", "integrity": "Yes"}],
        },
    }
    kube_api.create(resource_path(SOD, "serversecurityprofiles"), profile)
    try:
        trust.set("plain-2", name)
        obj = tenant.wait_ready_on("hw-only", "plain-2")
        assert obj["status"]["satisfyingProfiles"] == [name]
        assert (condition(obj, "Unsatisfiable") or {})["reason"] == "Satisfiable"
    finally:
        trust.set("plain-2")
        kube_api.delete(path)
