"""Migrations counted as they happen, not from what KubeVirt keeps.

KubeVirt garbage-collects finished VirtualMachineInstanceMigrations beyond the newest five per
VMI, so a count taken from a list at the end of an experiment is capped. `MigrationWatch` is an
informer on the namespace's migrations, started before the experiment: every migration it was
told about (added, changed or deleted) is counted once, with its VMI, source and target.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sod_operator.kube.informer import SYNCED, Informer
from sod_testbed.kubeapi import JsonObj, KubeApi, resource_path

KV = "kubevirt.io/v1"


class MigrationWatch:
    def __init__(self, kubeconfig: Path, namespace: str):
        self.client = KubeApi(kubeconfig, user_agent="reliability-migration-watch")
        self.seen: dict[str, dict[str, Any]] = {}
        """Migration name -> {"vmi", "phase", "target"}, as last observed."""
        self._lock = threading.Lock()
        self.informer = Informer(
            self.client,
            resource_path(KV, "virtualmachineinstancemigrations", namespace),
            handler=self._observe,
        )

    def start(self, timeout: float = 30) -> MigrationWatch:
        self.informer.start()
        if not self.informer.wait_synced(timeout):
            raise AssertionError(f"the migration watch did not sync within {timeout:.0f} s")
        return self

    def stop(self) -> None:
        self.informer.stop()
        self.client.close_watches()

    def _observe(self, etype: str, obj: JsonObj) -> None:
        if etype == SYNCED:
            return
        name = obj["metadata"]["name"]
        state = obj.get("status") or {}
        with self._lock:
            prev = self.seen.get(name, {})
            self.seen[name] = {
                "vmi": (obj.get("spec") or {}).get("vmiName") or prev.get("vmi", ""),
                "phase": state.get("phase") or prev.get("phase", ""),
                "target": (state.get("migrationState") or {}).get("targetNode")
                or prev.get("target", ""),
            }

    def count(self, vmi: str | None = None) -> int:
        with self._lock:
            return sum(1 for m in self.seen.values() if vmi is None or m["vmi"] == vmi)

    def per_vmi(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for m in self.seen.values():
                out[m["vmi"]] = out.get(m["vmi"], 0) + 1
            return out
