"""The Kubernetes descheduler (sigs.k8s.io/descheduler, the version pinned in tools/versions.env,
built by `tools/build-testbed.sh descheduler`) as a process of the test bed: the alternative a
platform team runs today to move pods off nodes that no longer match their required node
affinity (the benchmarks' baseline, issue 15).

Pure parts: `policy` renders the DeschedulerPolicy, `argv` the command line, `parse_log` reads
its JSON log into cycles and evictions. The shell: `Descheduler.start/stop` runs it in a
sandbox (`LocalCluster.run_process`, so the sandbox's stop() also stops it).

Facts used (kubernetes-sigs/descheduler v0.36.0, `7d2b28b`):
* `--descheduling-interval` makes it loop; the loop is `wait.NonSlidingUntil`
  (pkg/descheduler/descheduler.go): the first cycle runs at start, then one every interval
  from the previous cycle's start.
* at `-v 3` each cycle begins with "Resetting pod evictor counters" and ends with "Number of
  evictions/requests" (`runDeschedulerLoop`); `--logging-format=json` stamps every line with
  `ts` (epoch milliseconds).
* the Helm chart's DefaultEvictor arguments disable the `PodsWithLocalStorage` protection and
  enable `PodsWithPVC` (charts/descheduler/values.yaml); a virt-launcher pod has emptyDirs,
  so without that it is never evicted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sod_testbed.binaries import MissingBinaries, cache_dir, read_versions

if TYPE_CHECKING:
    from sod_testbed.cluster import LocalCluster
    from sod_testbed.processes import ManagedProcess

REQUIRED_AFFINITY = "requiredDuringSchedulingIgnoredDuringExecution"
PLUGIN = "RemovePodsViolatingNodeAffinity"
CYCLE_START = "Resetting pod evictor counters"
CYCLE_END = "Number of evictions/requests"
EVICTING = "Evicting pod"
BUILD_COMMAND = "tools/build-testbed.sh descheduler"
# KubeVirt's guidance for descheduling VMs: evictions in background (descheduler KEP-1397),
# or the descheduler counts KubeVirt's 429 "Eviction triggered evacuation" as a failure
# (kubevirt.io/monitoring/runbooks/HCOMisconfiguredDescheduler.html).
FEATURE_GATES = ("EvictionsInBackground=true",)


def descheduler_binary(cache: Path | None = None) -> Path:
    """The descheduler of the pinned version in the cache, or MissingBinaries naming the build."""
    version = read_versions().get("DESCHEDULER_VERSION")
    if not version:
        raise MissingBinaries("tools/versions.env lacks DESCHEDULER_VERSION")
    path = (cache or cache_dir()) / f"descheduler-{version}" / "bin" / "descheduler"
    if not os.access(path, os.X_OK):
        raise MissingBinaries(
            f"the descheduler is not built: {path}; build it with {BUILD_COMMAND}"
        )
    return path


def policy(namespaces: Sequence[str]) -> dict[str, Any]:
    """A DeschedulerPolicy with only RemovePodsViolatingNodeAffinity (required affinity), the
    Helm chart's DefaultEvictor arguments, limited to `namespaces`."""
    return {
        "apiVersion": "descheduler/v1alpha2",
        "kind": "DeschedulerPolicy",
        "profiles": [
            {
                "name": "node-affinity",
                "pluginConfig": [
                    {
                        "name": "DefaultEvictor",
                        "args": {
                            "podProtections": {
                                "defaultDisabled": ["PodsWithLocalStorage"],
                                "extraEnabled": ["PodsWithPVC"],
                            }
                        },
                    },
                    {
                        "name": PLUGIN,
                        "args": {
                            "nodeAffinityType": [REQUIRED_AFFINITY],
                            "namespaces": {"include": list(namespaces)},
                        },
                    },
                ],
                "plugins": {"deschedule": {"enabled": [PLUGIN]}},
            }
        ],
    }


def argv(binary: Path, kubeconfig: Path, policy_file: Path, interval_seconds: float) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--policy-config-file={policy_file}",
        f"--descheduling-interval={interval_seconds:g}s",
        "--secure-port=0",
        "--logging-format=json",
        "--v=3",
        f"--feature-gates={','.join(FEATURE_GATES)}",
    ]


@dataclass
class Cycle:
    """One descheduling cycle, from its log (epoch seconds)."""

    start: float
    end: float | None = None
    evicted: int | None = None
    requests: int | None = None


@dataclass
class DeschedulerLog:
    cycles: list[Cycle] = field(default_factory=list)
    evictions: list[tuple[float, str]] = field(default_factory=list)
    """(epoch, "namespace/pod") of each eviction the descheduler decided ("Evicting pod", logged
    just before its eviction request)."""


def parse_log(text: str) -> DeschedulerLog:
    """Cycles and evictions from the descheduler's `--logging-format=json` output (non-JSON
    lines, e.g. Go panics, are skipped)."""
    out = DeschedulerLog()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "ts" not in rec:
            continue
        ts = _epoch(float(rec["ts"]))
        msg = str(rec.get("msg", ""))
        if msg.startswith(CYCLE_START):
            out.cycles.append(Cycle(start=ts))
        elif msg.startswith(CYCLE_END) and out.cycles:
            cycle = out.cycles[-1]
            cycle.end = ts
            cycle.evicted = rec.get("totalEvicted")
            cycle.requests = rec.get("evictionRequests")
        elif msg == EVICTING and rec.get("pod"):
            out.evictions.append((ts, _pod_ref(rec["pod"])))
    return out


def _epoch(ts: float) -> float:
    """component-base's JSON `ts`: epoch milliseconds (seconds accepted too)."""
    return ts / 1000.0 if ts > 1e11 else ts


def _pod_ref(pod: Any) -> str:
    if isinstance(pod, dict):
        return f"{pod.get('namespace', '')}/{pod.get('name', '')}"
    return str(pod)


class Descheduler:
    """One descheduler process in a sandbox, with its own policy file and log."""

    def __init__(
        self, cluster: LocalCluster, name: str, namespaces: Sequence[str], interval: float
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.namespaces = list(namespaces)
        self.interval = interval
        self.proc: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.cluster.log_dir / f"{self.name}.log"

    def start(self) -> Descheduler:
        binary = descheduler_binary()
        policy_file = self.cluster.state_dir / f"{self.name}-policy.yaml"
        policy_file.write_text(yaml.safe_dump(policy(self.namespaces), sort_keys=False))
        cmd = argv(binary, self.cluster.kubeconfig, policy_file, self.interval)
        self.proc = self.cluster.run_process(self.name, cmd, env={**os.environ, "TZ": "UTC"})
        return self

    def log(self) -> DeschedulerLog:
        try:
            return parse_log(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return DeschedulerLog()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
