"""The machine and software a benchmark ran on, recorded next to every result.

Load average is sampled before and after each benchmark: the report says a figure came from
a quiet machine only when the load measured around it says so.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
QUIET_LOAD_PER_CORE = 0.35
"""1-minute load average per core below which we call the machine quiet (no other work)."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _command_output(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _testbed_versions() -> dict[str, str]:
    path = REPO_ROOT / "tools" / "versions.env"
    out: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def _git_revision() -> str | None:
    head = _command_output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    if head is None:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}{' (working tree modified)' if dirty else ''}"


def describe() -> dict[str, Any]:
    """Everything about the machine that a reader needs to compare figures across runs."""
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "usable_cores": usable,
        "memory_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "git": _git_revision(),
        "packages": {
            name: _package_version(name)
            for name in ("pydantic", "kopf", "kubernetes", "tpm2-pytss", "pyinstrument")
        },
        "testbed": _testbed_versions(),
        "swtpm": _command_output(["swtpm", "--version"]),
    }


def is_quiet(load_before: float, load_after: float, cores: int) -> bool:
    """Whether nothing else ran on the machine when the benchmark started.

    Only the load before counts: the load after includes the benchmark's own sandbox (etcd,
    the apiserver, up to 32 agents), so it says nothing about other work.
    """
    del load_after
    return load_before / cores <= QUIET_LOAD_PER_CORE
