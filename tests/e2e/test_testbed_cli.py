"""`sodctl sandbox up|status|kubeconfig|down` as a person runs it: a second, separate sandbox in
a temporary state directory, driven through the real `sodctl` entry point and the kubectl built
into the cache.

Covers: `up` starts the fake nodes with their architecture labels (and a mixed-CPU fleet with
`--cpu`) and prints how to use them; `kubeconfig` prints the path alone; kubectl lists the nodes;
`up` twice is safe; `status` lists virt-api, virt-controller, the virt-handler player and the
operator; `down` stops every process `up` started and removes the state. And the whole product
as `up` starts it: virt-controller holds its Lease, `kubectl apply -f
examples/securevm-vm-b.yaml` gets a VM placed and Compliant whose VMI virt-controller created.
Not covered: the session sandbox (test_testbed).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sod_testbed.binaries import REPO_ROOT, find_binaries
from sod_testbed.kubeapi import KubeApi, resource_path
from sod_testbed.kubevirt import lease_holder
from sod_testbed.processes import ProcessRecord

from tests.e2e.harness import condition, wait_for
from tests.e2e.harness import sodctl_sandbox as _sodctl


def test_sandbox_up_kubectl_down(state_dir: Path) -> None:
    find_binaries()  # a missing build fails here with the build command, never skips
    up = _sodctl(state_dir, "up", "--nodes", "hyperwall=2,plain=1", "--cpu", "plain=amd")
    assert "sandbox up in" in up.stdout
    kubectl = str(find_binaries().kubectl)
    assert kubectl in up.stdout

    kubeconfig = _sodctl(state_dir, "kubeconfig").stdout
    assert kubeconfig == f"{state_dir / 'kubeconfig'}\n"
    nodes = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            kubeconfig.strip(),
            f"--cache-dir={state_dir.parent / 'kube-cache'}",  # never write under ~/.kube
            "get",
            "nodes",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    labels = {
        n["metadata"]["name"]: n["metadata"]["labels"]["sod.dev/simulated-architecture"]
        for n in json.loads(nodes.stdout)["items"]
    }
    assert labels == {"hyperwall-1": "hyperwall", "hyperwall-2": "hyperwall", "plain-1": "plain"}
    # As the platform team would: each node's EK (read from its TPM), enrolled for its hardware.
    enrollments = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig.strip(),
         f"--cache-dir={state_dir.parent / 'kube-cache'}", "get", "platformenrollments",
         "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    enrolled = {
        e["metadata"]["name"]: e["spec"]["architecture"]
        for e in json.loads(enrollments.stdout)["items"]
    }
    assert enrolled == labels
    vendors = {
        n["metadata"]["name"]: sorted(
            k for k in n["metadata"]["labels"] if k.startswith("cpu-vendor.node.kubevirt.io/")
        )
        for n in json.loads(nodes.stdout)["items"]
    }
    assert vendors["plain-1"] == ["cpu-vendor.node.kubevirt.io/AMD"]
    assert vendors["hyperwall-1"] == ["cpu-vendor.node.kubevirt.io/Intel"]
    _the_product_runs(state_dir, kubectl, kubeconfig.strip())

    again = _sodctl(state_dir, "up", "--nodes", "hyperwall=2,plain=1")
    assert "already running" in again.stdout

    status = json.loads(_sodctl(state_dir, "status", "-o", "json").stdout)
    assert status["running"] is True
    assert {
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kwok",
        "virt-api",
        "virt-controller",
        "handler-player",
        "sod-operator",
    } <= set(status["processes"])
    records = [
        ProcessRecord.from_json(p)
        for p in json.loads((state_dir / "state.json").read_text())["processes"]
    ]
    assert all(r.alive() for r in records)

    down = _sodctl(state_dir, "down")
    assert "sandbox stopped" in down.stdout
    assert [r.name for r in records if r.alive()] == []
    assert not state_dir.exists()
    gone = _sodctl(state_dir, "kubeconfig", check=False)
    assert gone.returncode == 2
    assert "no sandbox is running" in gone.stderr


def _the_product_runs(state_dir: Path, kubectl: str, kubeconfig: str) -> None:
    """Right after `up`: virt-controller leads, and the README's first SecureVM is placed and
    Compliant, its VMI created by virt-controller."""
    api = KubeApi(Path(kubeconfig))
    assert lease_holder(api)
    subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            kubeconfig,
            f"--cache-dir={state_dir.parent / 'kube-cache'}",
            "apply",
            "-f",
            str(REPO_ROOT / "examples" / "securevm-vm-b.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = resource_path("sod.dev/v1alpha1", "securevms", "default", "vm-b")
    svm = wait_for(
        lambda: api.get(path),
        lambda o: (condition(o, "Compliant") or {}).get("status") == "True",
        "SecureVM vm-b Compliant",
        180,
    )
    node = svm["status"]["nodeName"]
    assert node.startswith("hyperwall-")  # the only nodes that protect from the hypervisor
    vmi = api.get(resource_path("kubevirt.io/v1", "virtualmachineinstances", "default", "vm-b"))
    assert vmi["status"]["nodeName"] == node
    assert "virt-controller" in {m["manager"] for m in vmi["metadata"]["managedFields"]}


def test_sandbox_up_rejects_a_bad_nodes_argument(state_dir: Path) -> None:
    bad = _sodctl(state_dir, "up", "--nodes", "hyperwall=two", check=False)
    assert bad.returncode == 2
    assert "--nodes: 'hyperwall=two': the count after '=' must be a whole number" in bad.stderr
    assert not (state_dir / "state.json").exists()
