"""Issue 14's "done when", as a person runs it: `sodctl sandbox up --nodes sev-snp=2,plain=1`
(real verifier, node agents on swtpm, operator, virt-api and virt-controller v1.9.0, the
virt-handler player), a SecureVM asking for Basic + HypervisorProtection with restarts allowed,
then `sodctl sandbox break` of its node.

Covers: the VM gets `launchSecurity.snp`, its VMI is `LiveMigratable=False`; after the break it
runs Compliant on the other SNP node as a new VMI, with no migration.
Not covered: the session sandbox's cases (test_confidential.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from sod_testbed.binaries import REPO_ROOT, find_binaries
from sod_testbed.kubeapi import KubeApi, resource_path

from tests.e2e.harness import condition, sodctl_sandbox, wait_for

SOD = "sod.dev/v1alpha1"
KV = "kubevirt.io/v1"


_sodctl = functools.partial(sodctl_sandbox, timeout=900)  # up with two SNP nodes: slower


def _vm_b() -> dict[str, Any]:
    body = yaml.safe_load((REPO_ROOT / "examples" / "securevm-vm-b.yaml").read_text())
    body["spec"]["relocation"] = {"restartAllowed": True}
    return body


def test_vm_b_on_an_snp_sandbox_restarts_onto_the_other_snp_node(state_dir: Path) -> None:
    find_binaries()
    _sodctl(state_dir, "up", "--nodes", "sev-snp=2,plain=1")
    api = KubeApi(Path(_sodctl(state_dir, "kubeconfig").stdout.strip()))
    body = _vm_b()
    ns, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
    api.create(resource_path(SOD, "securevms", ns), body)
    path = resource_path(SOD, "securevms", ns, name)
    svm = wait_for(
        lambda: api.get(path),
        lambda o: (condition(o, "Compliant") or {}).get("status") == "True",
        "VM-B Compliant",
        300,
    )
    first = svm["status"]["nodeName"]
    assert first.startswith("sev-snp-")
    vm = api.get(resource_path(KV, "virtualmachines", ns, name))
    assert vm["spec"]["template"]["spec"]["domain"]["launchSecurity"] == {"snp": {}}
    vmi_path = resource_path(KV, "virtualmachineinstances", ns, name)
    vmi = wait_for(
        lambda: api.get(vmi_path),
        lambda v: (condition(v, "LiveMigratable") or {}).get("status") == "False",
        "VMI LiveMigratable=False",
        60,
    )
    assert vmi["spec"]["domain"]["launchSecurity"] == {"snp": {}}

    broke = _sodctl(state_dir, "break", first)
    print(broke.stdout)
    other = "sev-snp-2" if first == "sev-snp-1" else "sev-snp-1"
    moved = wait_for(
        lambda: api.get(path),
        lambda o: (
            o["status"].get("nodeName") == other
            and (condition(o, "Compliant") or {}).get("status") == "True"
        ),
        f"VM-B Compliant on {other}",
        300,
    )
    assert moved["status"]["nodeProfile"] == "sev-snp"
    after = api.get(vmi_path)
    assert after["metadata"]["uid"] != vmi["metadata"]["uid"]  # a new instance
    assert after["spec"]["domain"]["launchSecurity"] == {"snp": {}}
    migrations = api.list(resource_path(KV, "virtualmachineinstancemigrations", ns))["items"]
    assert migrations == []
