"""What real KubeVirt (virt-controller, virt-api v1.9.0 and the virt-handler player) does to the
operator's migrations, and what the operator does about it (issue 13 item 5).

* a migration refused at admission: the attempt fails with the apiserver's reason in the
  SecureVM, the record stays consistent, the retry waits (back-off) and takes a new name. The
  refusal is made deterministic with a ValidatingAdmissionPolicy: virt-api's own refusals
  (in flight, not live-migratable, not running) are races the rule chain otherwise prevents,
  and they take the same path (an admission denial of the create);
* a migration that vanished with its VMI (virt-controller fails, then deletes a VMI's
  migrations with it): the record is abandoned and the name never created again for the new
  instance;
* a migration KubeVirt queues beyond its parallel limits stays Pending: waited for, reported as
  queued, never failed or issued twice;
* a mixed AMD/Intel fleet: a host-model VM is never sent to a compliant node of another CPU
  (KubeVirt pins the target pod to the source's CPU model and vendor).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_testbed.cluster import LocalCluster
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path
from sod_testbed.nodes import NodeSpec

from tests.e2e.harness import Kube, condition, wait_for
from tests.e2e.operator_run import SOD, OperatorProcess, Trust, install_catalog, securevm

VM_B = {"options": ["Basic", "HypervisorProtection"]}
X, Y = "hyperwall-1", "hyperwall-2"
HOLD = "sim.sod.dev/hold-migration"
ADMISSION = "admissionregistration.k8s.io/v1"
REFUSAL = "migrations are frozen in this namespace (e2e)"


def svm(kube: Kube, name: str) -> dict[str, Any]:
    obj = kube.get("securevms", name, api_version=SOD)
    assert obj is not None
    return obj


def ready(kube: Kube, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: svm(kube, name),
        lambda o: (
            (condition(o, "Ready") or {}).get("status") == "True"
            and (condition(o, "Relocating") or {}).get("status") != "True"
        ),
        f"{name} Ready",
        90,
    )


def migrations(kube: Kube, vm: str) -> list[dict[str, Any]]:
    items = kube.api.list(kube.path("virtualmachineinstancemigrations"))["items"]
    return [m for m in items if m["spec"]["vmiName"] == vm]


@pytest.fixture
def frozen(kube_api: KubeApi, namespace: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy refusing every migration created in `namespace`; yields the
    binding's path (delete it to thaw)."""
    name = f"freeze-{namespace}"[:63]
    policy = {
        "apiVersion": ADMISSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["kubevirt.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": ["virtualmachineinstancemigrations"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": REFUSAL}],
        },
    }
    binding = {
        "apiVersion": ADMISSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    policy_path = resource_path(ADMISSION, "validatingadmissionpolicies", name=name)
    binding_path = resource_path(ADMISSION, "validatingadmissionpolicybindings", name=name)
    kube_api.apply(policy_path, policy, "sod-e2e")
    kube_api.apply(binding_path, binding, "sod-e2e")
    yield binding_path
    for path in (binding_path, policy_path):
        if kube_api.get_or_none(path) is not None:
            kube_api.delete(path)


def _dry_run_refusal(kube: Kube, vmi: str) -> str:
    body = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "probe"},
        "spec": {"vmiName": vmi},
    }
    path = kube.path("virtualmachineinstancemigrations")
    try:
        kube.api.request("POST", path, query={"dryRun": "All"}, body=body)
    except ApiError as err:
        return err.message
    return ""


def test_a_refused_migration_is_reported_backed_off_and_retried_under_a_new_name(
    hyperwall_operator: OperatorProcess, kube: Kube, kube_api: KubeApi, frozen: str
):
    kube.create("securevms", securevm("vm-r", VM_B), api_version=SOD)
    source = ready(kube, "vm-r")["status"]["nodeName"]
    target = ({X, Y} - {source}).pop()
    # The policy takes effect asynchronously: wait until the apiserver refuses a dry run.
    wait_for(lambda: _dry_run_refusal(kube, "vm-r"), lambda m: REFUSAL in m, "the freeze", 30)
    Trust(kube_api).set(source)
    refused = wait_for(
        lambda: svm(kube, "vm-r"),
        lambda o: (condition(o, "RelocationFailed") or {}).get("reason") == "MigrationRefused",
        "vm-r RelocationFailed MigrationRefused",
        60,
    )
    failed = condition(refused, "RelocationFailed")
    assert REFUSAL in failed["message"]
    record = refused["status"]["relocation"]
    assert record["result"] == "Failed"
    assert record["fromNode"] == source
    assert "refused at admission" in record["message"]
    first_name = record["migrationName"]
    assert migrations(kube, "vm-r") == []  # nothing was admitted
    kube_api.delete(frozen)  # thaw: the retry after the back-off is admitted
    final = wait_for(
        lambda: svm(kube, "vm-r"),
        lambda o: (
            o["status"].get("nodeName") == target
            and (condition(o, "Ready") or {}).get("status") == "True"
            and o["status"].get("relocation") is None
        ),
        f"vm-r Ready on {target}",
        120,
    )
    attempts = [h for h in final["status"]["history"] if h.get("migrationName")]
    assert attempts[0]["migrationName"] == first_name
    assert attempts[0]["result"] == "Failed"
    assert attempts[-1]["result"] == "Succeeded"
    assert attempts[-1]["migrationName"] != first_name
    assert attempts[-1]["attempt"] > attempts[0]["attempt"]
    assert [m["metadata"]["name"] for m in migrations(kube, "vm-r")] == [
        attempts[-1]["migrationName"]
    ]


def test_a_migration_gone_with_its_vmi_is_never_created_again(
    hyperwall_operator: OperatorProcess, kube: Kube, kube_api: KubeApi
):
    kube.create("securevms", securevm("vm-v", VM_B), api_version=SOD)
    source = ready(kube, "vm-v")["status"]["nodeName"]
    old = kube.vmi("vm-v")
    assert old is not None
    # The player holds the migration Running until the annotation goes.
    kube.api.merge_patch(
        kube.path("virtualmachineinstances", "vm-v"), {"metadata": {"annotations": {HOLD: "true"}}}
    )
    Trust(kube_api).set(source)
    (mig,) = wait_for(
        lambda: [m for m in migrations(kube, "vm-v") if m.get("status", {}).get("phase")],
        lambda ms: len(ms) == 1,
        "the operator's migration of vm-v under way",
        60,
    )
    name = mig["metadata"]["name"]
    recorded = svm(kube, "vm-v")["status"]["relocation"]
    assert recorded["migrationName"] == name
    assert recorded["vmiUid"] == old["metadata"]["uid"]
    # The instance goes (the VM restarts it); virt-controller deletes its migrations with it.
    kube.api.delete(kube.path("virtualmachineinstances", "vm-v"))
    final = wait_for(
        lambda: svm(kube, "vm-v"),
        lambda o: (
            any(
                h.get("migrationName") == name and h["result"] == "Abandoned"
                for h in o["status"].get("history") or []
            )
            and (condition(o, "Ready") or {}).get("status") == "True"
        ),
        "vm-v's vanished migration abandoned and vm-v Ready again",
        120,
    )
    # virt-controller fails a migration whose VMI is gone before the migration goes with it:
    # the operator either saw that Failed phase (the failed attempt then ends as the new
    # instance runs on a compliant node) or saw the migration vanish (its instance replaced).
    entries = [h for h in final["status"]["history"] if h.get("migrationName") == name]
    results = [h["result"] for h in entries]
    assert results in (["Abandoned"], ["Failed", "Abandoned"]), entries
    if results == ["Abandoned"]:
        assert "was replaced" in entries[0]["message"]
    new = kube.vmi("vm-v")
    assert new is not None
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert name not in [m["metadata"]["name"] for m in migrations(kube, "vm-v")]


def test_a_migration_kubevirt_queues_is_waited_for_and_never_issued_twice(
    kubeconfig: Path, namespace: str, tmp_path: Path, kube: Kube, kube_api: KubeApi
):
    """KubeVirt runs at most 2 outbound migrations per node; the operator, told it may run 5
    (as if it could not see the others), leaves the third queued: Pending, waited for."""
    install_catalog(kube_api)
    trust = Trust(kube_api)
    trust.baseline({X: ("hyperwall",)})
    op = OperatorProcess(
        kubeconfig, namespace, tmp_path / "operator.log", "--max-outbound-per-node", "5"
    ).start()
    vms = ("vm-q1", "vm-q2", "vm-q3")
    try:
        for vm in vms:
            kube.create("securevms", securevm(vm, VM_B), api_version=SOD)
        for vm in vms:
            assert ready(kube, vm)["status"]["nodeName"] == X
            kube.api.merge_patch(
                kube.path("virtualmachineinstances", vm),
                {"metadata": {"annotations": {HOLD: "true"}}},
            )
        trust.set(Y, "hyperwall")
        trust.set(X)
        each = wait_for(
            lambda: {vm: migrations(kube, vm) for vm in vms},
            lambda by_vm: (
                all(len(m) == 1 and m[0].get("status") for m in by_vm.values())
                and sorted(m[0]["status"].get("phase", "") for m in by_vm.values()).count("Pending")
                == 1
            ),
            "three migrations, one queued by KubeVirt as Pending",
            60,
        )
        (queued,) = [vm for vm, ms in each.items() if ms[0]["status"]["phase"] == "Pending"]
        status = wait_for(
            lambda: svm(kube, queued),
            lambda o: "queued by KubeVirt" in (condition(o, "Relocating") or {}).get("message", ""),
            f"{queued} reported as queued",
            30,
        )
        assert (condition(status, "Relocating") or {})["reason"] == "Migrating"
        assert (condition(status, "RelocationFailed") or {})["status"] == "False"
        for vm in vms:
            kube.api.json_patch(
                kube.path("virtualmachineinstances", vm),
                [{"op": "remove", "path": "/metadata/annotations/sim.sod.dev~1hold-migration"}],
            )
        for vm in vms:
            final = wait_for(
                lambda vm=vm: svm(kube, vm),
                lambda o: (
                    o["status"].get("nodeName") == Y
                    and (condition(o, "Ready") or {}).get("status") == "True"
                    and o["status"].get("relocation") is None
                ),
                f"{vm} Ready on {Y}",
                120,
            )
            assert [h["result"] for h in final["status"]["history"]] == ["Succeeded"]
            assert len(migrations(kube, vm)) == 1  # never issued twice
    finally:
        op.stop()
        trust.baseline({})
        print(f"--- sod-operator log (tail) ---\n{op.log(4000)}")


def test_a_host_model_vm_never_tries_a_compliant_node_of_another_cpu(
    hyperwall_operator: OperatorProcess, kube: Kube, kube_api: KubeApi, sandbox: LocalCluster
):
    """A mixed fleet: the only other compliant node is AMD, the VM runs host-model on Intel.
    No migration is created (it would wait unschedulable and fail after 5 minutes); the
    SecureVM says why; an Intel node gaining trust then takes the VM."""
    amd = NodeSpec("hyperwall-amd-e2e", "hyperwall", cpu_kind="amd")
    sandbox.create_nodes([amd])
    amd_path = resource_path("v1", "nodes", name=amd.name)
    taint = {"key": "sod.dev/e2e-only", "value": "amd", "effect": "NoSchedule"}
    kube_api.merge_patch(amd_path, {"spec": {"taints": [taint]}})
    trust = Trust(kube_api)
    try:
        trust.baseline({X: ("hyperwall",)})
        body = securevm("vm-cpu", VM_B)
        body["spec"]["template"]["template"]["spec"]["tolerations"] = [
            {"key": "sod.dev/e2e-only", "operator": "Exists"}
        ]
        kube.create("securevms", body, api_version=SOD)
        assert ready(kube, "vm-cpu")["status"]["nodeName"] == X
        trust.set(amd.name, "hyperwall")
        trust.set(X)
        blocked = wait_for(
            lambda: svm(kube, "vm-cpu"),
            lambda o: (
                (condition(o, "Relocating") or {}).get("reason") == "NoReachableCompliantNode"
            ),
            "vm-cpu NoReachableCompliantNode",
            60,
        )
        message = (condition(blocked, "Pending") or {}).get("message", "")
        assert amd.name in message
        assert "SapphireRapids" in message
        assert migrations(kube, "vm-cpu") == []
        trust.set(Y, "hyperwall")
        final = wait_for(
            lambda: svm(kube, "vm-cpu"),
            lambda o: (
                o["status"].get("nodeName") == Y
                and (condition(o, "Ready") or {}).get("status") == "True"
                and o["status"].get("relocation") is None
            ),
            f"vm-cpu Ready on {Y}",
            120,
        )
        assert [h["result"] for h in final["status"]["history"]] == ["Succeeded"]
        assert len(migrations(kube, "vm-cpu")) == 1
    finally:
        trust.set(amd.name)
        kube.api.delete(kube.path("securevms", "vm-cpu", SOD))
        wait_for(lambda: kube.vmi("vm-cpu"), lambda v: v is None, "vm-cpu gone", 60)
        sandbox.delete_nodes([amd.name])


def test_restart_required_says_what_happens_and_what_will_be_done(
    hyperwall_operator: OperatorProcess, kube: Kube, kube_api: KubeApi
):
    """A template change KubeVirt cannot apply live (CPU cores) puts RestartRequired on the VM;
    from then on KubeVirt copies no template change to the running VMI, so a raised request's
    new affinity never reaches it. The SecureVM says so, what happens meanwhile and what will
    be done (a migration would carry the old affinity: none is created)."""
    Trust(kube_api).baseline({X: ("tpm-measured-boot",), Y: ("hyperwall",)})
    basic = {"options": ["Basic"], "properties": ["Confidentiality", "Integrity"]}
    fail_closed = {"failClosed": {"action": "Alert", "deadlineSeconds": 3600}}
    kube.create("securevms", securevm("vm-rr", basic, relocation=fail_closed), api_version=SOD)
    assert ready(kube, "vm-rr")["status"]["nodeName"] == X  # the cheapest sufficient class
    kube.api.json_patch(
        kube.path("securevms", "vm-rr", SOD),
        [{"op": "replace", "path": "/spec/template/template/spec/domain/cpu/cores", "value": 2}],
    )
    wait_for(
        lambda: kube.vm("vm-rr"),
        lambda vm: (condition(vm or {}, "RestartRequired") or {}).get("status") == "True",
        "KubeVirt's RestartRequired on vm-rr",
        60,
    )
    raised = {**VM_B, "properties": ["Confidentiality", "Integrity"]}
    kube.api.json_patch(
        kube.path("securevms", "vm-rr", SOD),
        [{"op": "replace", "path": "/spec/security", "value": raised}],
    )
    flagged = wait_for(
        lambda: svm(kube, "vm-rr"),
        lambda o: (condition(o, "Relocating") or {}).get("reason") == "RelocationRequiresRestart",
        "vm-rr RelocationRequiresRestart",
        60,
    )
    message = condition(flagged, "Relocating")["message"]
    assert "RestartRequired" in message
    assert f"keeps running on {X}" in message
    assert "(fail-closed deadline) it is reported (Alert)" in message
    assert "spec.relocation.restartAllowed" in message
    assert (condition(flagged, "Compliant") or {}).get("reason") == "RequestRaised"
    assert migrations(kube, "vm-rr") == []
