"""The KubeVirt simulator: plays virt-controller and virt-handler against a real apiserver.

Runs as a process (`python -m sod_testbed.kubevirt_sim --kubeconfig ...`, what
`sodctl sandbox up` starts) or in a thread (`KubeVirtSimulator(...).start()`, what the e2e
harness does). It only reads and writes API objects: VirtualMachine, VirtualMachineInstance,
VirtualMachineInstanceMigration (KubeVirt's real CRDs), virt-launcher Pods (placed by the real
kube-scheduler, run by kwok) and Events.

Design: informers (list + watch, one thread per kind) keep in-memory stores and wake a single
reconcile loop, which makes a full level-triggered pass over the stores (also every
`resync_seconds` and at the next timer deadline). Everything a pass needs is in the API objects
(phases, timestamps, labels), so a restarted simulator carries on where the last one stopped
and never duplicates work; objects returned by writes go into the stores at once.

KubeVirt behaviour reproduced, with the facts it relies on (../shared/notes/kubevirt.md; code
paths are kubevirt/kubevirt v1.9.0, read in the module cache):

* VM -> VMI (virt-controller `SetupVMIFromVM`, pkg/virt-controller/watch/vm/vm.go): a VM with
  `runStrategy` Always/RerunOnFailure/Once (or `running: true`) gets a VMI of the same name, with
  the template's metadata and spec and a controller ownerReference to the VM; Halted (or
  `running: false`) deletes the VMI. Always re-creates a final VMI, RerunOnFailure only a Failed
  one. VM status: `printableStatus`, `created`, `ready`, `observedGeneration`, conditions Ready,
  LiveMigratable (copied from the VMI) and Failure (sync errors, `processFailureCondition`).
* VMI -> virt-launcher pod carrying the VMI's nodeSelector (plus `kubevirt.io/schedulable=true`,
  which virt-handler sets on schedulable nodes), affinity and tolerations; labels
  `kubevirt.io=virt-launcher`, `kubevirt.io/created-by=<vmi uid>`; ownerReference to the VMI.
  Phases Pending -> Scheduling -> Scheduled -> Running follow the pod; `nodeName`, `activePods`,
  `phaseTransitionTimestamps`, label `kubevirt.io/nodeName`, conditions Ready and
  `LiveMigratable` (virt-handler `calculateLiveMigrationCondition`: False with reason
  `SEVNotLiveMigratable` "VMI uses SEV" for `launchSecurity.sev`/`.snp`, `TDXNotLiveMigratable`
  "VMI uses TDX" for `.tdx`, `SecureExecutionNotLiveMigratable` for s390x; kubevirt.md §1.3,
  §1.8). An unschedulable pod's `PodScheduled=False` condition is copied to the VMI.
* LiveUpdate (default rollout strategy since v1.6, kubevirt.md §1.7): a change of the VM
  template's `affinity`/`nodeSelector`/`tolerations` is patched onto the VMI spec; while the VMI
  is migrating (`migrations.IsMigrating`: `migrationState.startTimestamp` set and no
  `endTimestamp`) it is refused with VM condition `Failure`, reason `AffinityChangeError` /
  `TolerationsChangeError`, message "Error encountered while handling node affinity change
  request: Node affinity should not be changed during VMI migration", and applied after the
  migration ends. Nothing triggers a migration; the running launcher pod keeps its affinity.
* VMIM (pkg/virt-controller/watch/migration/migration.go, kubevirt.md §1.1, §1.2): phases
  "" -> Pending -> Scheduling -> Scheduled -> PreparingTarget -> TargetReady -> Running ->
  Succeeded | Failed, each recorded in `status.phaseTransitionTimestamps`. A VMI that is not
  running, not LiveMigratable ("Cannot migrate VMI, Reason: ..., Message: ...", what virt-api's
  admitter answers) or already migrating fails the VMIM. At most `parallelMigrationsPerCluster`
  (5) migrations hold a target pod at once and at most `parallelOutboundMigrationsPerNode` (2)
  leave one node; the rest wait in Pending. The target pod is the VMI's launcher pod plus
  `spec.addedNodeSelector` (the VMI's values win on collisions), a required pod anti-affinity to
  pods `kubevirt.io/created-by=<vmi uid>` on `kubernetes.io/hostname` (never the source node),
  label `kubevirt.io/migrationJobUID` and annotation `kubevirt.io/migrationJobName`. A target pod
  unschedulable for `unschedulable_timeout_seconds` (KubeVirt: 300 s, per-VMIM annotation
  `kubevirt.io/migrationUnschedulablePodTimeoutSeconds`) or pending for the catch-all timeout
  (900 s, `kubevirt.io/migrationPendingPodTimeoutSeconds`) is deleted and the VMIM fails
  ("Migration target pod was removed during active migration."). Once the target pod is Ready
  the VMI's `migrationState` is filled (sourceNode/Pod, targetNode/Pod, migrationUid, mode
  PreCopy), then `targetNodeAddress`, `startTimestamp`; after the modelled pre-copy duration
  (`migration_model.py`) `endTimestamp`, `completed`, `targetNodeDomainDetected`,
  `targetNodeDomainReadyTimestamp`; the VMI's `nodeName` and `activePods` move to the target,
  the source pod is removed, and the final `migrationState` is copied to the VMIM. Deleting a
  VMIM cancels it (abortStatus Succeeded). Of the finalized VMIMs of one VMI only the newest 5
  are kept (`defaultFinalizedMigrationGarbageCollectionBuffer`).
* Failure injection: KubeVirt's own functional-test annotation
  `kubevirt.io/func-test-force-launcher-migration-failure: "true"` on a VMI makes its
  migrations fail at the end of pre-copy (`migrationState.failed`, VMIM Failed).

Sandbox-only knobs (annotations on the VMI, not KubeVirt API): `sim.sod.dev/dirty-rate` (bytes/s,
a Kubernetes quantity) overrides the model's dirty rate; `sim.sod.dev/hold-migration: "true"`
keeps a running migration from completing until it is removed (so tests can act during a
migration without timing).

Not simulated: virt-api's webhooks (defaulting, most admission), the eviction webhook and PDBs,
evacuation (`kubevirt.io/drain`), MigrationPolicy tunables, post-copy, hotplug.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sod_operator.kube import Informer
from sod_operator.kube.informer import IndexFn

from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.migration_model import (
    MigrationModel,
    PrecopyPlan,
    parse_quantity,
    plan_precopy,
)
from sod_testbed.nodes import KUBEVIRT_SCHEDULABLE_LABEL

log = logging.getLogger("sod.kubevirt_sim")

KUBEVIRT = "kubevirt.io/v1"
MANAGER = "kubevirt-sim"
LAUNCHER_IMAGE = "quay.io/kubevirt/virt-launcher:v1.9.0"

# KubeVirt's names (staging/src/kubevirt.io/api/core/v1/types.go, v1.9.0).
APP_LABEL = "kubevirt.io"
CREATED_BY_LABEL = "kubevirt.io/created-by"
NODE_NAME_LABEL = "kubevirt.io/nodeName"
MIGRATION_JOB_LABEL = "kubevirt.io/migrationJobUID"
MIGRATION_JOB_NAME_ANNOTATION = "kubevirt.io/migrationJobName"
MIGRATION_SELECTOR_LABEL = "kubevirt.io/vmi-name"
DOMAIN_ANNOTATION = "kubevirt.io/domain"
VM_NAME_LABEL = "vm.kubevirt.io/name"
UNSCHEDULABLE_TIMEOUT_ANNOTATION = "kubevirt.io/migrationUnschedulablePodTimeoutSeconds"
PENDING_TIMEOUT_ANNOTATION = "kubevirt.io/migrationPendingPodTimeoutSeconds"
FORCE_MIGRATION_FAILURE_ANNOTATION = "kubevirt.io/func-test-force-launcher-migration-failure"
EVICT_ONLY_ANNOTATION = "descheduler.alpha.kubernetes.io/request-evict-only"

# Sandbox-only annotations (see module docstring).
DIRTY_RATE_ANNOTATION = "sim.sod.dev/dirty-rate"
HOLD_MIGRATION_ANNOTATION = "sim.sod.dev/hold-migration"

AFFINITY_CHANGE_ERROR = "AffinityChangeError"
TOLERATIONS_CHANGE_ERROR = "TolerationsChangeError"
AFFINITY_DURING_MIGRATION = "Node affinity should not be changed during VMI migration"
TOLERATIONS_DURING_MIGRATION = "tolerations should not be changed during VMI migration"

FINAL_VMIM = ("Succeeded", "Failed")
FINAL_VMI = ("Succeeded", "Failed")
RUNNING_STRATEGIES = ("Always", "RerunOnFailure", "Once")
DEFAULT_MEMORY = "1Gi"


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings. Durations from the migration model are multiplied by `time_scale`;
    the KubeVirt timeouts are real seconds (override them here for fast tests)."""

    time_scale: float = 1.0
    parallel_migrations_per_cluster: int = 5
    parallel_outbound_migrations_per_node: int = 2
    unschedulable_timeout_seconds: float = 300.0
    pending_timeout_seconds: float = 900.0
    resync_seconds: float = 5.0
    finalized_migrations_kept: int = 5
    model: MigrationModel = field(default_factory=MigrationModel)

    def argv(self) -> list[str]:
        """Command-line flags that reproduce this configuration in a simulator process."""
        return [
            f"--time-scale={self.time_scale}",
            f"--parallel-migrations-per-cluster={self.parallel_migrations_per_cluster}",
            f"--parallel-outbound-migrations-per-node={self.parallel_outbound_migrations_per_node}",
            f"--unschedulable-timeout={self.unschedulable_timeout_seconds}",
            f"--pending-timeout={self.pending_timeout_seconds}",
            f"--resync={self.resync_seconds}",
            f"--bandwidth-bps={self.model.bandwidth_bits_per_second}",
            f"--dirty-rate={self.model.dirty_rate_bytes_per_second}",
        ]


# ---- time -----------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime) -> str:
    """metav1.Time: RFC 3339 with second precision, as KubeVirt writes it."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---- object helpers -------------------------------------------------------------------------


def _key(obj: JsonObj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _conditions(obj: JsonObj) -> list[JsonObj]:
    conds: list[JsonObj] = obj.get("status", {}).get("conditions") or []
    return conds


def _condition(obj: JsonObj, ctype: str) -> JsonObj | None:
    return next((c for c in _conditions(obj) if c.get("type") == ctype), None)


def _set_condition(conds: list[JsonObj], new: JsonObj, now: dt.datetime) -> list[JsonObj]:
    """Replace the condition of new["type"], keeping lastTransitionTime if the status is same."""
    out = [c for c in conds if c.get("type") != new["type"]]
    old = next((c for c in conds if c.get("type") == new["type"]), None)
    merged = dict(new)
    if old is not None and old.get("status") == new["status"] and old.get("lastTransitionTime"):
        merged["lastTransitionTime"] = old["lastTransitionTime"]
    else:
        merged.setdefault("lastTransitionTime", _ts(now))
    merged.setdefault("lastProbeTime", None)
    out.append(merged)
    return out


def _owner_ref(obj: JsonObj, kind: str, api_version: str = KUBEVIRT) -> JsonObj:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _pod_ready(pod: JsonObj) -> bool:
    if pod.get("status", {}).get("phase") != "Running":
        return False
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def _pod_down(pod: JsonObj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp")) or pod.get("status", {}).get("phase") in (
        "Succeeded",
        "Failed",
    )


def _pod_unschedulable(pod: JsonObj) -> bool:
    cond = _condition(pod, "PodScheduled")
    return bool(cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable")


def vm_should_run(vm: JsonObj) -> bool | None:
    """True/False from runStrategy (or the deprecated `running`); None for Manual (leave it)."""
    spec = vm.get("spec", {})
    strategy = spec.get("runStrategy")
    if strategy is None:
        running = spec.get("running")
        if running is None:
            return False
        return bool(running)
    if strategy in RUNNING_STRATEGIES:
        return True
    if strategy == "Halted":
        return False
    return None


def live_migratable_condition(vmi: JsonObj) -> JsonObj:
    """virt-handler's LiveMigratable condition for the launch-security cases."""
    spec = vmi.get("spec", {})
    sec = spec.get("domain", {}).get("launchSecurity")
    if sec is not None:
        if spec.get("architecture") == "s390x":
            return _not_migratable("VMI uses Secure Execution", "SecureExecutionNotLiveMigratable")
        if "sev" in sec or "snp" in sec:
            return _not_migratable("VMI uses SEV", "SEVNotLiveMigratable")
        if "tdx" in sec:
            return _not_migratable("VMI uses TDX", "TDXNotLiveMigratable")
    return {"type": "LiveMigratable", "status": "True"}


def _not_migratable(message: str, reason: str) -> JsonObj:
    return {"type": "LiveMigratable", "status": "False", "reason": reason, "message": message}


def vmi_memory_bytes(vmi: JsonObj) -> float:
    domain = vmi.get("spec", {}).get("domain", {})
    guest = domain.get("memory", {}).get("guest")
    if guest is None:
        guest = domain.get("resources", {}).get("requests", {}).get("memory", DEFAULT_MEMORY)
    return parse_quantity(guest)


def vmi_vcpus(vmi: JsonObj) -> int:
    cpu = vmi.get("spec", {}).get("domain", {}).get("cpu", {})
    return max(
        1, int(cpu.get("cores", 1)) * int(cpu.get("sockets", 1)) * int(cpu.get("threads", 1))
    )


def is_migrating(vmi: JsonObj, now: dt.datetime) -> bool:
    """KubeVirt's `migrations.IsMigrating`: started and not yet ended."""
    state = vmi.get("status", {}).get("migrationState") or {}
    start = _parse_ts(state.get("startTimestamp"))
    end = _parse_ts(state.get("endTimestamp"))
    running = start is not None and now >= start
    if end is not None and now >= end:
        running = False
    return running


def launcher_pod(vmi: JsonObj) -> JsonObj:
    """The virt-launcher pod of a VMI, as virt-controller's template service renders it."""
    meta = vmi["metadata"]
    spec = vmi.get("spec", {})
    requests = dict(spec.get("domain", {}).get("resources", {}).get("requests") or {})
    requests.setdefault(
        "memory", spec.get("domain", {}).get("memory", {}).get("guest", DEFAULT_MEMORY)
    )
    # KubeVirt's default cpuAllocationRatio is 10: 100m per vCPU.
    requests.setdefault("cpu", f"{100 * vmi_vcpus(vmi)}m")
    labels = dict(meta.get("labels") or {})
    labels.update(
        {APP_LABEL: "virt-launcher", CREATED_BY_LABEL: meta["uid"], VM_NAME_LABEL: meta["name"]}
    )
    node_selector = dict(spec.get("nodeSelector") or {})
    node_selector[KUBEVIRT_SCHEDULABLE_LABEL] = "true"
    pod_spec: JsonObj = {
        "nodeSelector": node_selector,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": int(spec.get("terminationGracePeriodSeconds", 30)),
        "containers": [
            {
                "name": "compute",
                "image": LAUNCHER_IMAGE,
                "resources": {"requests": requests},
            }
        ],
    }
    if spec.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(spec["affinity"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(spec["tolerations"])
    if spec.get("schedulerName"):
        pod_spec["schedulerName"] = spec["schedulerName"]
    if spec.get("priorityClassName"):
        pod_spec["priorityClassName"] = spec["priorityClassName"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"virt-launcher-{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {DOMAIN_ANNOTATION: meta["name"], EVICT_ONLY_ANNOTATION: ""},
            "ownerReferences": [_owner_ref(vmi, "VirtualMachineInstance")],
        },
        "spec": pod_spec,
    }


def migration_target_pod(vmi: JsonObj, vmim: JsonObj) -> JsonObj:
    """`createTargetPod`: the launcher pod + addedNodeSelector + anti-affinity to the source."""
    pod = launcher_pod(vmi)
    spec = pod["spec"]
    selector = dict(vmim.get("spec", {}).get("addedNodeSelector") or {})
    selector.update(spec["nodeSelector"])  # the VMI's own values win on collisions
    spec["nodeSelector"] = selector
    term = {
        "labelSelector": {"matchLabels": {CREATED_BY_LABEL: vmi["metadata"]["uid"]}},
        "topologyKey": "kubernetes.io/hostname",
    }
    affinity = spec.setdefault("affinity", {})
    anti = affinity.setdefault("podAntiAffinity", {})
    anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(term)
    pod["metadata"]["labels"][MIGRATION_JOB_LABEL] = vmim["metadata"]["uid"]
    pod["metadata"]["annotations"][MIGRATION_JOB_NAME_ANNOTATION] = vmim["metadata"]["name"]
    return pod


# ---- informers (sod_operator.kube.Informer) --------------------------------------------------


def _label(key: str) -> IndexFn:
    return lambda obj: (obj["metadata"].get("labels") or {}).get(key)


def _uid(obj: JsonObj) -> str | None:
    uid: str | None = obj["metadata"].get("uid")
    return uid


def _vmim_vmi(obj: JsonObj) -> str | None:
    return f"{obj['metadata'].get('namespace')}/{obj.get('spec', {}).get('vmiName', '')}"


# ---- the simulator --------------------------------------------------------------------------


class KubeVirtSimulator:
    def __init__(self, kubeconfig: Path, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.api = KubeApi(kubeconfig, user_agent=MANAGER)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.vms = self._informer(resource_path(KUBEVIRT, "virtualmachines"))
        self.vmis = self._informer(
            resource_path(KUBEVIRT, "virtualmachineinstances"), indexers={"uid": _uid}
        )
        self.vmims = self._informer(
            resource_path(KUBEVIRT, "virtualmachineinstancemigrations"),
            indexers={"vmi": _vmim_vmi},
        )
        self.pods = self._informer(
            resource_path("v1", "pods"),
            label_selector=f"{APP_LABEL}=virt-launcher",
            indexers={
                "created-by": _label(CREATED_BY_LABEL),
                "migration": _label(MIGRATION_JOB_LABEL),
            },
        )
        self._thread = threading.Thread(target=self._loop, name="kubevirt-sim", daemon=True)
        # Precise (sub-second) instants of this process; API timestamps have second precision
        # and are the fallback after a restart.
        self._started: dict[str, float] = {}
        self._prepared: dict[str, float] = {}
        self._pass_errors = 0
        self.passes = 0

    def _informer(
        self,
        path: str,
        label_selector: str | None = None,
        indexers: dict[str, IndexFn] | None = None,
    ) -> Informer:
        return Informer(
            self.api, path, handler=self._changed, stop=self._stop,
            label_selector=label_selector, indexers=indexers,
        )  # fmt: skip

    def _changed(self, etype: str, obj: JsonObj) -> None:
        del etype, obj
        self._wake.set()

    # ---- lifecycle ----

    def start(self, wait_synced: float = 30.0) -> KubeVirtSimulator:
        for inf in (self.vms, self.vmis, self.vmims, self.pods):
            inf.start()
        for inf in (self.vms, self.vmis, self.vmims, self.pods):
            if not inf.synced.wait(wait_synced):
                raise RuntimeError(f"kubevirt-sim: could not list {inf.path} in {wait_synced}s")
        self._thread.start()
        log.info("kubevirt-sim started: %s", self.config)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.api.close_watches()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for inf in (self.vms, self.vmis, self.vmims, self.pods):
            if inf.thread.is_alive():
                inf.thread.join(timeout=5)

    def run_forever(self) -> None:
        self.start()
        while not self._stop.is_set():
            self._stop.wait(1.0)
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            started = time.monotonic()
            deadline = started + self.config.resync_seconds
            try:
                next_due = self.reconcile_once()
            except Exception:
                log.exception("kubevirt-sim: reconcile pass failed")
                next_due = time.monotonic() + 1.0
            pass_seconds = time.monotonic() - started
            if self._pass_errors:
                next_due = min(next_due or deadline, time.monotonic() + 0.5)
            timeout = max(0.0, min(next_due or deadline, deadline) - time.monotonic())
            self._wake.wait(timeout)
            # Coalesce bursts of watch events into one pass, for about as long as a pass takes
            # (at most 20 ms): a pass over a big fleet is not repeated per event, and a small one
            # reacts about as fast as KubeVirt's workqueues (no fixed delay per hop).
            if not self._stop.is_set():
                time.sleep(min(max(pass_seconds, 0.001), 0.02))

    # ---- one level-triggered pass ----

    def reconcile_once(self) -> float | None:
        """One pass over every VM, VMI and VMIM; returns the monotonic time of the next timer."""
        self.passes += 1
        self._pass_errors = 0
        self._next_due: float | None = None
        self._running_cache: list[JsonObj] | None = None
        now = _now()
        for vm in self.vms.items():
            self._guard(self._sync_vm, vm, now)
        for vmi in self.vmis.items():
            self._guard(self._sync_vmi, vmi, now)
        # Oldest first, as KubeVirt's queue roughly serves them (names break same-second ties).
        for vmim in sorted(self.vmims.items(), key=_creation_order):
            self._guard(self._sync_vmim, vmim, now)
        self._guard(self._sync_orphans, now)
        self._guard(self._gc_finalized_migrations)
        return self._next_due

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except ApiError as err:
            self._pass_errors += 1
            if err.status in (404, 409):
                log.debug("kubevirt-sim: %s (retrying)", err)
            else:
                log.warning("kubevirt-sim: %s", err)
        except Exception:
            self._pass_errors += 1
            log.exception("kubevirt-sim: %s failed", getattr(fn, "__name__", fn))

    def _due(self, seconds_from_now: float) -> None:
        t = time.monotonic() + max(0.0, seconds_from_now)
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    # ---- VirtualMachine (virt-controller's VM controller) ----

    def _sync_vm(self, vm: JsonObj, now: dt.datetime) -> None:
        ns, name = _key(vm)
        if vm["metadata"].get("deletionTimestamp"):
            return  # the garbage collector removes the VMI (ownerReference)
        vmi = self.vmis.get(ns, name)
        if vmi is not None and not _owned_by(vmi, vm):
            vmi = None  # a VMI of the same name that is not this VM's: leave it alone
        should_run = vm_should_run(vm)
        strategy = vm.get("spec", {}).get("runStrategy")
        sync_error: tuple[str, str] | None = None
        if vmi is not None and not vmi["metadata"].get("deletionTimestamp"):
            phase = vmi.get("status", {}).get("phase")
            final = phase in FINAL_VMI
            restart = final and (
                (strategy in ("Always", None) and should_run is True)
                or (strategy == "RerunOnFailure" and phase == "Failed")
            )
            if should_run is False or restart:
                self._stop_vmi(vmi)
                vmi = None
            else:
                sync_error = self._live_update(vm, vmi, now)
        elif vmi is None and should_run:
            vmi = self._create_vmi(vm)
        self._write_vm_status(vm, vmi, sync_error, now)

    def _stop_vmi(self, vmi: JsonObj) -> None:
        """Delete a VMI and its launcher pods (virt-handler shuts the domain down, the launcher
        exits); the garbage collector would remove the pods too, later."""
        ns, name = _key(vmi)
        self._delete(self.vmis, resource_path(KUBEVIRT, "virtualmachineinstances", ns, name))
        for pod in self._pods_of(vmi):
            self._delete(self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"]))
        log.info("VMI %s/%s: stopped", ns, name)

    def _create_vmi(self, vm: JsonObj) -> JsonObj:
        ns, name = _key(vm)
        template = vm.get("spec", {}).get("template", {})
        meta = copy.deepcopy(template.get("metadata") or {})
        meta.pop("creationTimestamp", None)
        meta.update(
            {
                "name": name,
                "namespace": ns,
                "labels": dict(meta.get("labels") or {}),
                "ownerReferences": [_owner_ref(vm, "VirtualMachine")],
            }
        )
        meta.pop("generateName", None)
        body = {
            "apiVersion": KUBEVIRT,
            "kind": "VirtualMachineInstance",
            "metadata": meta,
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        created = self.api.create(resource_path(KUBEVIRT, "virtualmachineinstances", ns), body)
        self.vmis.put(created)
        log.info("VM %s/%s: created VMI", ns, name)
        return created

    def _live_update(self, vm: JsonObj, vmi: JsonObj, now: dt.datetime) -> tuple[str, str] | None:
        """Propagate template affinity/nodeSelector/tolerations to the VMI (vm.go 749-806)."""
        tspec = vm.get("spec", {}).get("template", {}).get("spec", {})
        vspec = vmi.get("spec", {})
        affinity_changed = (tspec.get("affinity") or None) != (vspec.get("affinity") or None) or (
            tspec.get("nodeSelector") or None
        ) != (vspec.get("nodeSelector") or None)
        tolerations_changed = (tspec.get("tolerations") or None) != (
            vspec.get("tolerations") or None
        )
        if not affinity_changed and not tolerations_changed:
            return None
        if is_migrating(vmi, now):
            if affinity_changed:
                return (
                    AFFINITY_CHANGE_ERROR,
                    "Error encountered while handling node affinity change request: "
                    + AFFINITY_DURING_MIGRATION,
                )
            return (
                TOLERATIONS_CHANGE_ERROR,
                "Error encountered while handling tolerations change request: "
                + TOLERATIONS_DURING_MIGRATION,
            )
        ops = []
        for fld in ("affinity", "nodeSelector", "tolerations"):
            want = tspec.get(fld) or None
            have = vspec.get(fld) or None
            if want == have:
                continue
            if want is None:
                ops.append({"op": "remove", "path": f"/spec/{fld}"})
            else:
                ops.append({"op": "add", "path": f"/spec/{fld}", "value": want})
        ns, name = _key(vmi)
        # The test op makes the patch fail (and be retried) if the VMI changed under us.
        ops.insert(0, {"op": "test", "path": "/metadata/uid", "value": vmi["metadata"]["uid"]})
        patched = self.api.json_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name), ops
        )
        self.vmis.put(patched)
        log.info("VM %s/%s: live-updated VMI %s", ns, name, [o["path"] for o in ops[1:]])
        return None

    def _write_vm_status(
        self,
        vm: JsonObj,
        vmi: JsonObj | None,
        sync_error: tuple[str, str] | None,
        now: dt.datetime,
    ) -> None:
        old = vm.get("status", {})
        # Keep the old Ready condition for _set_condition: dropping it first gave Ready a new
        # lastTransitionTime on every pass, i.e. a status write per VM per pass.
        conds = list(old.get("conditions", []))
        vmi_status = (vmi or {}).get("status", {})
        phase = vmi_status.get("phase")
        ready_cond = _condition(vmi, "Ready") if vmi else None
        ready = bool(ready_cond and ready_cond.get("status") == "True")
        conds = _set_condition(
            conds,
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                **({} if ready else {"reason": "VMINotExists" if vmi is None else "PodNotReady"}),
            },
            now,
        )
        migratable = _condition(vmi, "LiveMigratable") if vmi else None
        if migratable:
            conds = _set_condition(conds, dict(migratable), now)
        else:
            conds = [c for c in conds if c.get("type") != "LiveMigratable"]
        if sync_error:
            reason, message = sync_error
            conds = _set_condition(
                conds,
                {"type": "Failure", "status": "True", "reason": reason, "message": message},
                now,
            )
        else:
            conds = [c for c in conds if c.get("type") != "Failure"]
        if vmi is None:
            printable = "Stopped"
        elif vmi["metadata"].get("deletionTimestamp"):
            printable = "Stopping"
        elif is_migrating(vmi, now) or (
            vmi_status.get("migrationState") and not vmi_status["migrationState"].get("completed")
        ):
            printable = "Migrating"
        elif phase == "Running":
            printable = "Running"
        elif (_condition(vmi, "PodScheduled") or {}).get("reason") == "Unschedulable":
            printable = "ErrorUnschedulable"
        elif phase == "Failed":
            printable = "Stopped"
        else:
            printable = "Starting"
        status = {
            "created": vmi is not None,
            "ready": ready,
            "printableStatus": printable,
            "conditions": conds,
            "observedGeneration": vm["metadata"].get("generation"),
            "desiredGeneration": vm["metadata"].get("generation"),
        }
        if vm.get("spec", {}).get("runStrategy"):
            status["runStrategy"] = vm["spec"]["runStrategy"]
        if _same_status(old, status):
            return
        ns, name = _key(vm)
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachines", ns, name, "status"), {"status": status}
        )
        self.vms.put(patched)

    # ---- VirtualMachineInstance (virt-controller's VMI controller + virt-handler) ----

    def _pods_of(self, vmi: JsonObj) -> list[JsonObj]:
        uid = vmi["metadata"]["uid"]
        ns = vmi["metadata"]["namespace"]
        return [
            p for p in self.pods.by_index("created-by", uid) if p["metadata"]["namespace"] == ns
        ]

    def _active_pod(self, vmi: JsonObj, pods: list[JsonObj]) -> JsonObj | None:
        active = (vmi.get("status", {}).get("activePods") or {}).keys()
        for p in pods:
            if p["metadata"]["uid"] in active:
                return p
        # Before the VMI is running: the launcher pod is the one not made for a migration.
        if not active:
            for p in pods:
                if MIGRATION_JOB_LABEL not in (p["metadata"].get("labels") or {}):
                    return p
        return None

    def _sync_vmi(self, vmi: JsonObj, now: dt.datetime) -> None:
        if vmi["metadata"].get("deletionTimestamp"):
            return
        status = copy.deepcopy(vmi.get("status") or {})
        phase = status.get("phase", "")
        if phase in FINAL_VMI:
            return
        pods = self._pods_of(vmi)
        pod = self._active_pod(vmi, pods)
        ns, name = _key(vmi)
        if not phase:
            phase = "Pending"
        if phase == "Pending" and pod is None:
            created = self.api.create(resource_path("v1", "pods", ns), launcher_pod(vmi))
            self.pods.put(created)
            pod = created
            log.info("VMI %s/%s: created launcher pod %s", ns, name, created["metadata"]["name"])
        if pod is not None and phase == "Pending":
            phase = "Scheduling"
        if phase in ("Scheduling", "Scheduled") and pod is not None:
            node = pod.get("spec", {}).get("nodeName")
            if node:
                phase = "Scheduled"
                status["nodeName"] = node
            sched = _condition(pod, "PodScheduled")
            conds = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
            if sched and sched.get("status") == "False":
                conds = _set_condition(
                    conds,
                    {k: sched[k] for k in ("type", "status", "reason", "message") if k in sched},
                    now,
                )
            status["conditions"] = conds
            if node and _pod_ready(pod):
                phase = "Running"
                status["activePods"] = {pod["metadata"]["uid"]: node}
                status["migrationMethod"] = "LiveMigration"
                status["launcherContainerImageVersion"] = LAUNCHER_IMAGE
                status["qosClass"] = pod.get("status", {}).get("qosClass", "Burstable")
                ip = pod.get("status", {}).get("podIP")
                if ip:
                    status["interfaces"] = [
                        {"name": "default", "ipAddress": ip, "ipAddresses": [ip]}
                    ]
        if phase == "Running":
            migrating = (status.get("migrationState") or {}).get("completed") is False
            if (pod is None or _pod_down(pod)) and not migrating:
                phase = "Failed"
                status["reason"] = "PodTerminating" if pod is not None else "PodDeleted"
            conds = status.get("conditions", [])
            conds = _set_condition(
                conds,
                {"type": "Ready", "status": "True" if phase == "Running" else "False"},
                now,
            )
            conds = _set_condition(conds, live_migratable_condition(vmi), now)
            status["conditions"] = conds
        self._write_vmi_status(vmi, phase, status, now)

    def _write_vmi_status(
        self, vmi: JsonObj, phase: str, status: JsonObj, now: dt.datetime
    ) -> JsonObj:
        old = vmi.get("status") or {}
        if phase != old.get("phase"):
            status["phase"] = phase
            trans = list(status.get("phaseTransitionTimestamps") or [])
            for p in _phases_between(old.get("phase", ""), phase, _VMI_PHASES):
                trans.append({"phase": p, "phaseTransitionTimestamp": _ts(now)})
            status["phaseTransitionTimestamps"] = trans
            log.info("VMI %s/%s: %s -> %s", *_key(vmi), old.get("phase", '""'), phase)
        labels_patch: JsonObj = {}
        node = status.get("nodeName")
        if node and (vmi["metadata"].get("labels") or {}).get(NODE_NAME_LABEL) != node:
            labels_patch = {"labels": {NODE_NAME_LABEL: node}}
        if _same_status(old, status) and not labels_patch:
            return vmi
        ns, name = _key(vmi)
        body: JsonObj = {"status": status}
        if labels_patch:
            body["metadata"] = labels_patch
        # VMIs have no status subresource: status is written through the main resource.
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name), body
        )
        self.vmis.put(patched)
        return patched

    # ---- VirtualMachineInstanceMigration (migration controller + virt-handler) ----

    def _running_migrations(self) -> list[JsonObj]:
        """`findRunningMigrations`: unfinished VMIMs that are Running or hold a target pod.
        Computed once per pass; target pods created in the pass are added as they are made."""
        if self._running_cache is None:
            self._running_cache = [
                m
                for m in self.vmims.items()
                if m.get("status", {}).get("phase", "") not in FINAL_VMIM
                and (
                    m.get("status", {}).get("phase") == "Running"
                    or self.pods.by_index("migration", m["metadata"]["uid"])
                )
            ]
        return self._running_cache

    def _outbound_on(self, node: str, running: list[JsonObj]) -> int:
        n = 0
        for m in running:
            vmi = self.vmis.get(m["metadata"]["namespace"], m.get("spec", {}).get("vmiName", ""))
            if vmi is None:
                continue
            st = vmi.get("status", {})
            if (
                st.get("nodeName") == node
                or (st.get("migrationState") or {}).get("sourceNode") == node
            ):
                n += 1
        return n

    def _target_pod(self, vmim: JsonObj) -> JsonObj | None:
        pods = self.pods.by_index("migration", vmim["metadata"]["uid"])
        return pods[0] if pods else None

    def _sync_vmim(self, vmim: JsonObj, now: dt.datetime) -> None:
        ns, name = _key(vmim)
        status = copy.deepcopy(vmim.get("status") or {})
        phase = status.get("phase", "")
        uid = vmim["metadata"]["uid"]
        vmi_name = vmim.get("spec", {}).get("vmiName", "")
        vmi = self.vmis.get(ns, vmi_name)
        if phase in FINAL_VMIM:
            return
        if (vmim["metadata"].get("labels") or {}).get(
            MIGRATION_SELECTOR_LABEL
        ) != vmi_name and vmi_name:
            # virt-api's mutating webhook labels every VMIM with its VMI's name.
            patched = self.api.merge_patch(
                resource_path(KUBEVIRT, "virtualmachineinstancemigrations", ns, name),
                {"metadata": {"labels": {MIGRATION_SELECTOR_LABEL: vmi_name}}},
            )
            self.vmims.put(patched)
            vmim = patched
        pod = self._target_pod(vmim)
        vstate = ((vmi or {}).get("status") or {}).get("migrationState") or {}
        ours = vstate.get("migrationUid") == uid

        def fail(message: str) -> None:
            # The VMI is cleaned up before the VMIM says Failed: whoever sees the final phase
            # sees the VMI as it stays.
            if pod is not None:
                self._drop_target(vmi, pod)
            self._finish_vmim(vmim, status, "Failed", message, vmi if ours else None, now)

        if vmim["metadata"].get("deletionTimestamp"):
            return
        if vmi is None or vmi["metadata"].get("deletionTimestamp"):
            fail("Migration failed because vmi does not exist.")
            return
        vphase = vmi.get("status", {}).get("phase")
        if not phase:
            cond = _condition(vmi, "LiveMigratable")
            if vphase != "Running":
                fail(f"Cannot migrate VMI which is not running (phase {vphase or 'Pending'}).")
                return
            if cond and cond.get("status") == "False":
                fail(
                    f"Cannot migrate VMI, Reason: {cond.get('reason')}, "
                    f"Message: {cond.get('message')}"
                )
                return
            busy = [
                m
                for m in self.vmims.by_index("vmi", f"{ns}/{vmi_name}")
                if m["metadata"]["uid"] != uid
                and m.get("status", {}).get("phase", "") not in ("", *FINAL_VMIM)
            ]
            if busy:
                fail(
                    "VMI is not eligible for migration because another migration job "
                    "is in progress."
                )
                return
            phase = "Pending"
        elif vphase in FINAL_VMI:
            fail("Migration failed vmi shutdown during migration.")
            return

        if phase == "Pending":
            if pod is None:
                running = self._running_migrations()
                if len(running) >= self.config.parallel_migrations_per_cluster:
                    return self._write_vmim_status(vmim, phase, status, now)
                source = vmi.get("status", {}).get("nodeName", "")
                if (
                    self._outbound_on(source, running)
                    >= self.config.parallel_outbound_migrations_per_node
                ):
                    return self._write_vmim_status(vmim, phase, status, now)
                pod = self.api.create(
                    resource_path("v1", "pods", ns), migration_target_pod(vmi, vmim)
                )
                self.pods.put(pod)
                running.append(vmim)
                log.info("VMIM %s/%s: created target pod %s", ns, name, pod["metadata"]["name"])
            phase = "Scheduling"

        if phase in ("Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running") and (
            pod is None or _pod_down(pod)
        ):
            if pod is None:
                fail("Migration target pod was removed during active migration.")
            else:
                fail("Migration failed because target pod shutdown during migration")
            return

        if phase == "Scheduling":
            assert pod is not None  # every phase past Pending returned above without one
            created = _parse_ts(pod["metadata"].get("creationTimestamp")) or now
            pending_for = (now - created).total_seconds()
            if not pod.get("spec", {}).get("nodeName"):
                unsched = _annotation_seconds(
                    vmim,
                    UNSCHEDULABLE_TIMEOUT_ANNOTATION,
                    self.config.unschedulable_timeout_seconds,
                )
                catch_all = _annotation_seconds(
                    vmim, PENDING_TIMEOUT_ANNOTATION, self.config.pending_timeout_seconds
                )
                if _pod_unschedulable(pod) and pending_for >= unsched:
                    self._event(
                        vmim,
                        "Warning",
                        "MigrationTargetPodUnschedulable",
                        f"Migration target pod for VMI [{ns}/{vmi_name}] "
                        "is currently unschedulable.",
                    )
                    self._delete(
                        self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"])
                    )
                    fail("Migration target pod was removed during active migration.")
                    return
                if pending_for >= catch_all:
                    self._delete(
                        self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"])
                    )
                    fail("Migration target pod was removed during active migration.")
                    return
                self._due(min(unsched, catch_all) - pending_for + 0.1)
            elif _pod_ready(pod):
                phase = "Scheduled"
                vmi = self._hand_off(vmi, vmim, pod, now)

        if phase == "Scheduled":
            phase = "PreparingTarget"
            self._prepared.setdefault(uid, time.monotonic())

        if phase == "PreparingTarget":
            plan = self._plan(vmi)
            began = self._prepared.setdefault(uid, time.monotonic())
            wait = plan.setup_seconds * self.config.time_scale - (time.monotonic() - began)
            if wait > 0:
                self._due(wait)
            else:
                vmi = self._patch_migration_state(
                    vmi, {"targetNodeAddress": "127.0.0.1", "startTimestamp": _ts(now)}
                )
                self._started[uid] = time.monotonic()
                phase = "TargetReady"

        if phase == "TargetReady":
            phase = "Running"

        if phase == "Running":
            assert pod is not None  # every phase past Pending returned above without one
            vstate = (vmi.get("status", {}).get("migrationState")) or {}
            if (vmi["metadata"].get("annotations") or {}).get(HOLD_MIGRATION_ANNOTATION) == "true":
                return self._write_vmim_status(vmim, phase, status, now)
            plan = self._plan(vmi)
            began_at = self._started.get(uid)
            if began_at is None:  # restarted: fall back to the recorded start
                start = _parse_ts(vstate.get("startTimestamp")) or now
                began_at = time.monotonic() - (now - start).total_seconds()
                self._started[uid] = began_at
            left = plan.transfer_seconds + plan.downtime_seconds
            left = left * self.config.time_scale - (time.monotonic() - began_at)
            if left > 0:
                self._due(left)
                return self._write_vmim_status(vmim, phase, status, now)
            forced = (vmi["metadata"].get("annotations") or {}).get(
                FORCE_MIGRATION_FAILURE_ANNOTATION
            ) == "true"
            if forced or not plan.converged:
                reason = (
                    "forced by annotation " + FORCE_MIGRATION_FAILURE_ANNOTATION
                    if forced
                    else "migration did not converge within completionTimeoutPerGiB"
                )
                vmi = self._patch_migration_state(
                    vmi,
                    {
                        "endTimestamp": _ts(now),
                        "completed": True,
                        "failed": True,
                        "failureReason": reason,
                    },
                )
                self._drop_target(vmi, pod)
                self._finish_vmim(
                    vmim, status, "Failed", "source node reported migration failed", vmi, now
                )
                return
            vmi = self._complete(vmi, pod, now)
            self._finish_vmim(
                vmim, status, "Succeeded", "Source node reported migration succeeded", vmi, now
            )
            return

        self._write_vmim_status(vmim, phase, status, now)

    def _drop_target(self, vmi: JsonObj | None, pod: JsonObj) -> None:
        """Remove a failed migration's target pod, and its entry in the VMI's activePods."""
        ns = pod["metadata"]["namespace"]
        self._delete(self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"]))
        uid = pod["metadata"]["uid"]
        if vmi is not None and uid in (vmi.get("status", {}).get("activePods") or {}):
            patched = self.api.merge_patch(
                resource_path(KUBEVIRT, "virtualmachineinstances", ns, vmi["metadata"]["name"]),
                {"status": {"activePods": {uid: None}}},
            )
            self.vmis.put(patched)

    def _plan(self, vmi: JsonObj) -> PrecopyPlan:
        dirty = (vmi["metadata"].get("annotations") or {}).get(DIRTY_RATE_ANNOTATION)
        return plan_precopy(
            self.config.model, vmi_memory_bytes(vmi), parse_quantity(dirty) if dirty else None
        )

    def _hand_off(self, vmi: JsonObj, vmim: JsonObj, pod: JsonObj, now: dt.datetime) -> JsonObj:
        st = vmi.get("status", {})
        source = self._active_pod(vmi, self._pods_of(vmi))
        state = {
            "migrationUid": vmim["metadata"]["uid"],
            "sourceNode": st.get("nodeName"),
            "sourcePod": source["metadata"]["name"] if source else None,
            "targetNode": pod["spec"]["nodeName"],
            "targetPod": pod["metadata"]["name"],
            "mode": "PreCopy",
            "migrationNetworkType": "pod",
        }
        active = dict(st.get("activePods") or {})
        active[pod["metadata"]["uid"]] = pod["spec"]["nodeName"]
        ns, name = _key(vmi)
        # A new migration replaces the previous migrationState object as a whole.
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
            {"status": {"migrationState": None}},
        )
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
            {"status": {"migrationState": state, "activePods": active}},
        )
        self.vmis.put(patched)
        log.info(
            "VMIM %s: target pod %s scheduled on %s",
            vmim["metadata"]["name"],
            pod["metadata"]["name"],
            pod["spec"]["nodeName"],
        )
        return patched

    def _patch_migration_state(self, vmi: JsonObj, fields: JsonObj) -> JsonObj:
        ns, name = _key(vmi)
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
            {"status": {"migrationState": fields}},
        )
        self.vmis.put(patched)
        return patched

    def _complete(self, vmi: JsonObj, target: JsonObj, now: dt.datetime) -> JsonObj:
        st = vmi.get("status", {})
        state = st.get("migrationState") or {}
        node = target["spec"]["nodeName"]
        ns, name = _key(vmi)
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
            {
                "metadata": {"labels": {NODE_NAME_LABEL: node}},
                "status": {
                    "nodeName": node,
                    "activePods": {target["metadata"]["uid"]: node},
                    "migrationState": {
                        "endTimestamp": _ts(now),
                        "completed": True,
                        "targetNodeDomainDetected": True,
                        "targetNodeDomainReadyTimestamp": _ts(now),
                    },
                },
            },
        )
        # merge patch merges maps: drop the source pod's entry from activePods explicitly.
        active = patched.get("status", {}).get("activePods") or {}
        stale = [uid for uid in active if uid != target["metadata"]["uid"]]
        if stale:
            patched = self.api.merge_patch(
                resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
                {"status": {"activePods": {uid: None for uid in stale}}},
            )
        self.vmis.put(patched)
        source_pod = state.get("sourcePod")
        if source_pod:
            self._delete(self.pods, resource_path("v1", "pods", ns, source_pod))
        log.info("VMI %s/%s: migrated %s -> %s", ns, name, state.get("sourceNode"), node)
        return patched

    def _finish_vmim(
        self,
        vmim: JsonObj,
        status: JsonObj,
        phase: str,
        message: str,
        vmi: JsonObj | None,
        now: dt.datetime,
    ) -> None:
        if vmi is not None:
            state = vmi.get("status", {}).get("migrationState")
            if state and state.get("migrationUid") == vmim["metadata"]["uid"]:
                status["migrationState"] = state
        self._event(
            vmim,
            "Normal" if phase == "Succeeded" else "Warning",
            "SuccessfulMigration" if phase == "Succeeded" else "FailedMigration",
            message,
        )
        log.info("VMIM %s/%s: %s (%s)", *_key(vmim), phase, message)
        self._write_vmim_status(vmim, phase, status, now)
        uid = vmim["metadata"]["uid"]
        self._started.pop(uid, None)
        self._prepared.pop(uid, None)

    def _write_vmim_status(
        self, vmim: JsonObj, phase: str, status: JsonObj, now: dt.datetime
    ) -> None:
        old = vmim.get("status") or {}
        if phase != old.get("phase", ""):
            status["phase"] = phase
            trans = list(status.get("phaseTransitionTimestamps") or [])
            # Phases passed through within one pass are each recorded, as KubeVirt's
            # controller records every phase it sets.
            recorded = {t["phase"] for t in trans}
            for p in _phases_between(old.get("phase", ""), phase, _VMIM_PHASES):
                if p not in recorded:
                    trans.append({"phase": p, "phaseTransitionTimestamp": _ts(now)})
            status["phaseTransitionTimestamps"] = trans
        if _same_status(old, status):
            return
        ns, name = _key(vmim)
        patched = self.api.merge_patch(
            resource_path(KUBEVIRT, "virtualmachineinstancemigrations", ns, name, "status"),
            {"status": status},
        )
        self.vmims.put(patched)

    # ---- clean-up ----

    def _sync_orphans(self, now: dt.datetime) -> None:
        """Target pods of VMIMs that are gone (cancelled) and VMIs whose migration was cancelled."""
        uids = {m["metadata"]["uid"] for m in self.vmims.items()}
        final = {
            m["metadata"]["uid"]
            for m in self.vmims.items()
            if m.get("status", {}).get("phase") in FINAL_VMIM
        }
        for pod in self.pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            ns = pod["metadata"]["namespace"]
            vmi = self._vmi_of_pod(pod)
            if vmi is None:  # its VMI is gone (deleted by a user or a namespace deletion)
                self._delete(self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"]))
                continue
            job = (pod["metadata"].get("labels") or {}).get(MIGRATION_JOB_LABEL)
            if not job:
                continue
            active = (vmi or {}).get("status", {}).get("activePods") or {}
            if pod["metadata"]["uid"] in active and (
                ((vmi or {}).get("status", {}).get("migrationState") or {}).get("completed")
                and not vmi["status"]["migrationState"].get("failed")
            ):
                continue  # the VMI now runs in this pod
            if job not in uids or (job in final and pod["metadata"]["uid"] not in active):
                self._delete(self.pods, resource_path("v1", "pods", ns, pod["metadata"]["name"]))
        for vmi in self.vmis.items():
            state = vmi.get("status", {}).get("migrationState") or {}
            if state and not state.get("completed") and state.get("migrationUid") not in uids:
                ns, name = _key(vmi)
                # Only the source pod stays active; merge patch drops the others by null.
                active = vmi["status"].get("activePods") or {}
                source = state.get("sourceNode")
                patched = self.api.merge_patch(
                    resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
                    {
                        "status": {
                            "migrationState": {
                                "abortRequested": True,
                                "abortStatus": "Succeeded",
                                "completed": True,
                                "failed": True,
                                "endTimestamp": _ts(now),
                            },
                            "activePods": {
                                uid: (node if node == source else None)
                                for uid, node in active.items()
                            },
                        }
                    },
                )
                self.vmis.put(patched)
                log.info("VMI %s/%s: migration %s cancelled", ns, name, state.get("migrationUid"))

    def _vmi_of_pod(self, pod: JsonObj) -> JsonObj | None:
        uid = (pod["metadata"].get("labels") or {}).get(CREATED_BY_LABEL)
        ns = pod["metadata"]["namespace"]
        matches = self.vmis.by_index("uid", uid) if uid else []
        return next((v for v in matches if v["metadata"]["namespace"] == ns), None)

    def _gc_finalized_migrations(self) -> None:
        keep = self.config.finalized_migrations_kept
        by_vmi: dict[tuple[str, str], list[JsonObj]] = {}
        for m in self.vmims.items():
            if m.get("status", {}).get("phase") in FINAL_VMIM:
                key = (m["metadata"]["namespace"], m.get("spec", {}).get("vmiName", ""))
                by_vmi.setdefault(key, []).append(m)
        for (ns, _vmi), migrations in by_vmi.items():
            if len(migrations) <= keep:
                continue
            migrations.sort(key=_creation_order)
            for m in migrations[: len(migrations) - keep]:
                self._delete(
                    self.vmims,
                    resource_path(
                        KUBEVIRT, "virtualmachineinstancemigrations", ns, m["metadata"]["name"]
                    ),
                )

    # ---- writes ----

    def _delete(self, informer: Informer, path: str) -> None:
        self.api.delete(path, propagation="Background")
        parts = path.split("/")
        ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
        informer.forget(ns, parts[-1])

    def _event(self, obj: JsonObj, etype: str, reason: str, message: str) -> None:
        ns, name = _key(obj)
        now = _ts(_now())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", KUBEVIRT),
                "kind": obj.get("kind", ""),
                "name": name,
                "namespace": ns,
                "uid": obj["metadata"]["uid"],
            },
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": "virt-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiError):
            self.api.create(resource_path("v1", "events", ns), body)


_VMIM_PHASES = [
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Succeeded",
]


_VMI_PHASES = ["Pending", "Scheduling", "Scheduled", "Running"]


def _phases_between(old: str, new: str, order: list[str]) -> list[str]:
    """The phases from just after `old` up to `new`: a pass that moves an object through several
    phases records each, as KubeVirt's controllers do (a failure is recorded as itself)."""
    if new not in order:
        return [new]
    start = order.index(old) + 1 if old in order else 0
    end = order.index(new)
    return order[start : end + 1] if start <= end else [new]


def _annotation_seconds(obj: JsonObj, key: str, default: float) -> float:
    value = (obj["metadata"].get("annotations") or {}).get(key)
    if value is None:
        return default
    try:
        return float(int(value))  # KubeVirt parses these with strconv.Atoi
    except ValueError:
        log.warning(
            "%s/%s: annotation %s=%r is not an integer; using %s", *_key(obj), key, value, default
        )
        return default


def _creation_order(obj: JsonObj) -> tuple[str, str]:
    return obj["metadata"]["creationTimestamp"], obj["metadata"]["name"]


def _owned_by(child: JsonObj, owner: JsonObj) -> bool:
    return any(
        ref.get("uid") == owner["metadata"]["uid"]
        for ref in child["metadata"].get("ownerReferences") or []
    )


def _same_status(old: JsonObj, new: JsonObj) -> bool:
    """Whether writing `new` over `old` would change nothing (ignoring probe times)."""
    return all(_strip_probe(old.get(k)) == _strip_probe(v) for k, v in new.items())


def _strip_probe(value: Any) -> Any:
    if isinstance(value, list):
        return [_strip_probe(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip_probe(v) for k, v in value.items() if k != "lastProbeTime"}
    return value


# ---- process entry point ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sod_testbed.kubevirt_sim",
        description="Simulate KubeVirt's virt-controller and virt-handler against a cluster.",
    )
    d = SimConfig()
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=d.time_scale,
        help="multiply modelled migration durations (default 1: real time)",
    )
    parser.add_argument(
        "--parallel-migrations-per-cluster", type=int, default=d.parallel_migrations_per_cluster
    )
    parser.add_argument(
        "--parallel-outbound-migrations-per-node",
        type=int,
        default=d.parallel_outbound_migrations_per_node,
    )
    parser.add_argument(
        "--unschedulable-timeout",
        type=float,
        default=d.unschedulable_timeout_seconds,
        help="seconds a target pod may stay unschedulable (KubeVirt: 300)",
    )
    parser.add_argument("--pending-timeout", type=float, default=d.pending_timeout_seconds)
    parser.add_argument("--resync", type=float, default=d.resync_seconds)
    parser.add_argument("--bandwidth-bps", type=float, default=d.model.bandwidth_bits_per_second)
    parser.add_argument("--dirty-rate", type=float, default=d.model.dirty_rate_bytes_per_second)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = SimConfig(
        time_scale=args.time_scale,
        parallel_migrations_per_cluster=args.parallel_migrations_per_cluster,
        parallel_outbound_migrations_per_node=args.parallel_outbound_migrations_per_node,
        unschedulable_timeout_seconds=args.unschedulable_timeout,
        pending_timeout_seconds=args.pending_timeout,
        resync_seconds=args.resync,
        model=MigrationModel(
            bandwidth_bits_per_second=args.bandwidth_bps,
            dirty_rate_bytes_per_second=args.dirty_rate,
        ),
    )
    sim = KubeVirtSimulator(args.kubeconfig, config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("kubevirt-sim: signal %d, stopping", signum)
        sim._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
