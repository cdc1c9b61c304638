"""`sodctl sandbox demo` (what `make demo` runs) as a person runs it: the real `sodctl` entry
point in a subprocess without stdin, in a separate sandbox state directory ($SOD_SANDBOX_DIR).

Covers: the demo starts a sandbox whose nodes are attested (swtpm + node-agent + verifier) and
the operator as a sandbox process; VM-A lands on the cheap tpm-measured-boot class, VM-B on a
hyperwall node, the records VM on datasafe; breaking VM-B's node moves VM-B to the other
hyperwall node with one migration and leaves VM-A and the records VM where they were; the node
is verified again afterwards; a second run reuses the sandbox and its operator and tells the
story again; `sodctl sandbox down` then leaves no process behind. Not covered: the times it
prints (measured, never asserted; `make bench` measures them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_testbed.binaries import find_binaries
from sod_testbed.kubeapi import KubeApi, resource_path
from sod_testbed.processes import ProcessRecord

SOD = "sod.dev/v1alpha1"
NS = "sod-demo"
HYPERWALL = {"hyperwall-1", "hyperwall-2"}


def _sodctl(state_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOD_SANDBOX_DIR=str(state_dir))
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "sod_operator.cli.main", "sandbox", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _demo(state_dir: Path) -> str:
    run = _sodctl(state_dir, "demo")
    output = f"--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}"
    assert run.returncode == 0, output
    return run.stdout


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Short on purpose: swtpm's Unix socket paths under it must stay within 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="sod-demo-"))
    path = base / "sandbox"
    yield path
    _sodctl(path, "down", timeout=120)  # never leave a sandbox behind, even on failure
    shutil.rmtree(base, ignore_errors=True)


def _svm(api: KubeApi, name: str) -> dict[str, Any]:
    return api.get(resource_path(SOD, "securevms", namespace=NS, name=name))


def _compliant_on(svm: dict[str, Any]) -> str | None:
    conditions = {c["type"]: c for c in svm["status"].get("conditions") or []}
    if conditions.get("Compliant", {}).get("status") != "True":
        return None
    return str(svm["status"]["nodeName"])


def _assert_story_outcome(api: KubeApi, stdout: str) -> None:
    vm_a, vm_b, records = (_svm(api, n) for n in ("vm-a", "vm-b", "records"))
    # Cost-aware placement: Basic needs no premium hardware.
    assert _compliant_on(vm_a) == "tpm-measured-boot-1"
    assert _compliant_on(records) == "datasafe-1"
    assert vm_a["status"].get("history") in (None, [])
    assert records["status"].get("history") in (None, [])

    (moved,) = vm_b["status"]["history"]
    assert moved["trigger"] == "TrustRevoked"
    assert moved["result"] == "Succeeded"
    assert {moved["fromNode"], moved["toNode"]} == HYPERWALL
    assert _compliant_on(vm_b) == moved["toNode"]

    migrations = api.list(
        resource_path("kubevirt.io/v1", "virtualmachineinstancemigrations", namespace=NS)
    )["items"]
    assert [(m["spec"]["vmiName"], m["status"]["phase"]) for m in migrations] == [
        ("vm-b", "Succeeded")
    ]
    assert migrations[0]["metadata"]["name"] == moved["migrationName"]

    # The broken node was healed: the verifier labels it again.
    broken = api.get(resource_path("v1", "nodes", name=moved["fromNode"]))
    assert broken["metadata"]["labels"].get(profile_label("hyperwall")) == "verified"

    assert f"vm-b is Compliant again on {moved['toNode']}" in stdout
    assert "vm-a untouched: still on tpm-measured-boot-1" in stdout
    assert "records untouched: still on datasafe-1" in stdout
    assert "sodctl explain svm vm-b -n sod-demo" in stdout
    # With QEMU installed VM-B is a real guest and its migration a real one (issue 18).
    real = shutil.which("qemu-system-x86_64") is not None
    assert ("the guest on the target: heartbeats" in " ".join(stdout.split())) == real


def _records(state_dir: Path) -> list[ProcessRecord]:
    state = json.loads((state_dir / "state.json").read_text())
    return [ProcessRecord.from_json(p) for p in state["processes"]]


def test_demo_tells_the_story_twice_and_down_stops_everything(state_dir: Path) -> None:
    find_binaries()  # a missing build fails here with the build command, never skips

    first = _demo(state_dir)
    assert "starting: `sodctl sandbox up --nodes" in first
    api = KubeApi(state_dir / "kubeconfig")
    _assert_story_outcome(api, first)
    records = _records(state_dir)
    names = {r.name for r in records}
    assert {
        "sod-operator",
        "verifier",
        "handler-player",
        "virt-controller",
        "agent-hyperwall-1",
    } <= names
    assert all(r.alive() for r in records)

    second = _demo(state_dir)  # `make demo` twice
    assert "reusing the sandbox running in" in second
    assert "sod-operator already running" in second
    assert f"deleting namespace {NS} left by an earlier run" in second
    _assert_story_outcome(api, second)
    again = _records(state_dir)
    assert {r.pid for r in again} == {r.pid for r in records}  # nothing restarted

    down = _sodctl(state_dir, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert [r.name for r in again if r.alive()] == []
    assert not state_dir.exists()
