"""Where the test bed's binaries are: the versions pinned in tools/versions.env, the cache they were
built into by tools/build-testbed.sh ($SOD_CACHE, default ~/.cache/sod-operator).

Nothing here builds anything; a missing file is a `MissingBinaries` error that names the command
that builds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_COMMAND = "tools/build-testbed.sh all  (or: make testbed)"


class MissingBinaries(RuntimeError):
    """The cache lacks a binary or file the test bed needs."""


def versions_file() -> Path:
    return Path(os.environ.get("SOD_VERSIONS_FILE", REPO_ROOT / "tools" / "versions.env"))


def read_versions(path: Path | None = None) -> dict[str, str]:
    """KEY=value lines of tools/versions.env (comments and blanks ignored)."""
    path = path or versions_file()
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise MissingBinaries(
            f"{path} not found: run from a clone of sod-operator or set SOD_VERSIONS_FILE"
        ) from err
    versions: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip()
    return versions


def cache_dir() -> Path:
    return Path(os.environ.get("SOD_CACHE", Path.home() / ".cache" / "sod-operator"))


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    kwok_stages: Path
    kubevirt_crds: Path
    kubevirt_rbac: Path
    kubevirt_webhooks: Path
    virt_api: Path
    virt_controller: Path
    kube_version: str
    kubevirt_version: str

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


def find_binaries(cache: Path | None = None) -> Binaries:
    """Locate every binary of the pinned versions, or fail naming each missing one."""
    v = read_versions()
    cache = cache or cache_dir()
    try:
        k8s = cache / f"k8s-{v['KUBE_VERSION']}" / "bin"
        kv = cache / f"kubevirt-{v['KUBEVIRT_VERSION']}"
        found = Binaries(
            etcd=cache / f"etcd-{v['ETCD_VERSION']}" / "bin" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=cache / f"kwok-{v['KWOK_VERSION']}" / "bin" / "kwok",
            kwok_stages=cache / f"kwok-{v['KWOK_VERSION']}" / "bin" / "stages.yaml",
            kubevirt_crds=kv / "crds.json",
            kubevirt_rbac=kv / "rbac.json",
            kubevirt_webhooks=kv / "webhooks.json",
            virt_api=kv / "bin" / "virt-api",
            virt_controller=kv / "bin" / "virt-controller",
            kube_version=v["KUBE_VERSION"],
            kubevirt_version=v["KUBEVIRT_VERSION"],
        )
    except KeyError as err:
        raise MissingBinaries(f"{versions_file()} lacks {err.args[0]}") from err
    executables = [
        found.etcd,
        found.kube_apiserver,
        found.kube_controller_manager,
        found.kube_scheduler,
        found.kubectl,
        found.kwok,
        found.virt_api,
        found.virt_controller,
    ]
    files = [found.kwok_stages, found.kubevirt_crds, found.kubevirt_rbac, found.kubevirt_webhooks]
    missing = [str(p) for p in executables if not os.access(p, os.X_OK)]
    missing += [str(p) for p in files if not p.is_file()]
    if missing:
        raise MissingBinaries(
            "the local control plane is not built; missing:\n  "
            + "\n  ".join(missing)
            + f"\nbuild it with: {BUILD_COMMAND}  (cold: ~20 minutes on 2 cores, then cached)"
        )
    return found
