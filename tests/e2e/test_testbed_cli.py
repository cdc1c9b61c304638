"""`sodctl sandbox up|status|kubeconfig|down` as a person runs it: a second, separate sandbox in
a temporary state directory, driven through the real `sodctl` entry point and the kubectl built
into the cache.

Covers: `up` starts the fake nodes with their architecture labels and prints how to use them;
`kubeconfig` prints the path alone; kubectl lists the nodes; `up` twice is safe; `down` stops
every process `up` started and removes the state. Not covered: the session sandbox (test_testbed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sod_testbed.binaries import find_binaries
from sod_testbed.processes import ProcessRecord


def _sodctl(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOD_SANDBOX_DIR=str(state_dir))
    return subprocess.run(
        [sys.executable, "-m", "sod_operator.cli.main", "sandbox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=check,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sandbox"
    yield path
    _sodctl(path, "down", check=False)  # never leave a sandbox behind, even on failure


def test_sandbox_up_kubectl_down(state_dir: Path) -> None:
    find_binaries()  # a missing build fails here with the build command, never skips
    up = _sodctl(state_dir, "up", "--nodes", "hyperwall=2,plain=1", "--no-examples")
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

    again = _sodctl(state_dir, "up", "--nodes", "hyperwall=2,plain=1")
    assert "already running" in again.stdout

    status = json.loads(_sodctl(state_dir, "status", "-o", "json").stdout)
    assert status["running"] is True
    assert {"etcd", "kube-apiserver", "kube-scheduler", "kwok", "kubevirt-sim"} <= set(
        status["processes"]
    )
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


def test_sandbox_up_rejects_a_bad_nodes_argument(state_dir: Path) -> None:
    bad = _sodctl(state_dir, "up", "--nodes", "hyperwall=two", check=False)
    assert bad.returncode == 2
    assert "--nodes: 'hyperwall=two': the count after '=' must be a whole number" in bad.stderr
    assert not (state_dir / "state.json").exists()
