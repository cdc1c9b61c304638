"""Running the `helm` binary the test bed builds, and reading what `helm template` renders.

helm is a Go binary built into the cache by `tools/build-testbed.sh helm` (`make test` runs it):
`$SOD_HELM` if set, else `$SOD_CACHE/helm-<HELM_VERSION>/bin/helm`. A missing helm is a test
FAILURE naming the command that builds it, never a skip: a chart tier that silently does not run
proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sod_testbed.binaries import cache_dir, read_versions

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "sod-operator"
VALUES_DIR = Path(__file__).resolve().parent / "values"
_RENDERED: dict[tuple[str, ...], str] = {}
BUILD_HINT = "tools/build-testbed.sh helm  (`make test` builds it; cold: ~4 minutes)"


def find_helm() -> Path:
    """The helm binary, or a test failure that says how to build it."""
    override = os.environ.get("SOD_HELM")
    if override:
        path = Path(override)
    else:
        version = read_versions().get("HELM_VERSION")
        if not version:
            pytest.fail("tools/versions.env has no HELM_VERSION", pytrace=False)
        path = cache_dir() / f"helm-{version}" / "bin" / "helm"
    if not os.access(path, os.X_OK):
        on_path = shutil.which("helm")
        hint = (
            f" (a helm on PATH, {on_path}, is not used: the version is pinned)" if on_path else ""
        )
        pytest.fail(f"helm not found at {path}{hint}; build it with: {BUILD_HINT}", pytrace=False)
    return path


@dataclass(frozen=True)
class Helm:
    """helm with its state (cache, config, repositories) kept out of the user's home."""

    binary: Path
    home: Path

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        # Never the user's ~/.kube/config: without an explicit kubeconfig helm gets a path that
        # does not exist, so a stray cluster call fails instead of reaching a real cluster.
        env["KUBECONFIG"] = str(kubeconfig or self.home / "no-kubeconfig")
        return env

    def run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            env=self.env(kubeconfig),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}",
                pytrace=False,
            )
        return proc

    def template(
        self,
        values: Path | None = None,
        *extra: str,
        release: str = "sod",
        namespace: str = "sod-system",
    ) -> str:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if values is not None:
            args += ["--values", str(values)]
        key = (str(self.binary), *args, *extra)
        # Rendering is deterministic; many tests inspect the same rendering.
        if key not in _RENDERED:
            _RENDERED[key] = self.run(*args, *extra).stdout
        return _RENDERED[key]


def values_files() -> list[Path]:
    """The non-default values files every chart check runs with (besides the defaults)."""
    return sorted(VALUES_DIR.glob("*.yaml"))


def variant_ids() -> list[str]:
    return ["defaults", *(p.stem for p in values_files())]


def variant_paths() -> list[Path | None]:
    return [None, *values_files()]


@dataclass(frozen=True)
class Rendered:
    """One object of a rendered chart and the template it came from."""

    source: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.source})"


def parse_rendered(text: str) -> list[Rendered]:
    """Split `helm template` output into objects, keeping each one's `# Source:` template."""
    out: list[Rendered] = []
    for chunk in text.split("\n---\n"):
        source = ""
        for line in chunk.splitlines():
            if line.startswith("# Source: "):
                source = line.removeprefix("# Source: ").strip()
                break
        obj = yaml.safe_load(chunk + "\n")
        if obj:
            out.append(Rendered(source, obj))
    return out
