"""The virt-handler player: the node side of KubeVirt v1.9.0, for kwok nodes that run no VM.

virt-controller and virt-api are the real ones (kubevirt.py). virt-handler cannot run here (it
needs KVM, libvirt and a virt-launcher per VM), so this player writes what it would write, under
the identity it would have: per node one `kubevirt.io=virt-handler` pod in namespace kubevirt
(bound to the node) and a token of service account kubevirt-handler bound to that pod by the
TokenRequest API. The apiserver puts the node's name into that identity, so virt-api's node
restriction (pkg/virt-api/webhooks/validating-webhook/admitters/vmi-update-admitter.go) applies:
a node may write only VMIs whose status.nodeName or migrationState.targetNode it is.

What it plays, and nothing else (paths in kubevirt.io/kubevirt v1.9.0):

1. A VMI Scheduled on a node (label kubevirt.io/nodeName) becomes Running (pkg/virt-handler/
   vm.go `updateVMIStatus`): `phase: Running` with its phaseTransitionTimestamp,
   `selinuxContext: "none"` (`updateSELinuxContext` on a host without SELinux; virt-controller
   refuses to create a migration target pod without one), `migrationMethod` and the
   `LiveMigratable` condition as `calculateLiveMigrationCondition` decides it for what the test
   bed can express (pod-network binding, host devices and GPUs, SEV/SNP, TDX, Secure Execution,
   Hyper-V passthrough, non-shared PVCs and host disks; see `live_migratable`). Every condition
   it writes carries `lastProbeTime: null` as Go serialises an unset metav1.Time: without it
   virt-controller's JSON-patch `test` of the conditions fails forever.
2. A migration, once virt-controller has handed the VMI off (migrationState.targetNode set), in
   the order of pkg/virt-handler/migration-target.go and migration-source.go:
   a. target: `targetNodeAddress` and `targetDirectMigrationNodePorts` (`updateStatus`, after the
      model's set-up time) -> virt-controller moves the VMIM to TargetReady;
   b. source: `startTimestamp`, `mode: PreCopy` (`setMigrationProgressStatus`) -> Running;
   c. after the pre-copy time of migration_model.py (x `time_scale`):
      - failed (the VMI annotation kubevirt.io/func-test-force-launcher-migration-failure,
        KubeVirt's own functional-test knob, or a pre-copy that does not converge), or aborted
        (migrationState.abortRequested, set by virt-controller when the VMIM is deleted): the
        source writes `failed`, `completed`, `endTimestamp`, `failureReason` (and
        `abortStatus: Succeeded`) -> Failed; the target launcher exits (its pod Succeeded);
      - succeeded: the target acknowledges (`ackMigrationCompletion` + `updateStatus`):
        `targetNodeDomainDetected`, `targetNodeDomainReadyTimestamp`, `endTimestamp`,
        `status.nodeName` and label kubevirt.io/nodeName = target; then `completed`
        (`finalizeMigration`) -> Succeeded; then it drops label
        kubevirt.io/migrationTargetNodeName (`finalCleanup`); the source launcher exits (its pod
        Succeeded; it stays in activePods until deleted, as in KubeVirt).
   Every step is read back from the VMI (level-triggered), so a restarted player carries on.

Sandbox-only knobs (annotations on the VMI, not KubeVirt API): `sim.sod.dev/hold-migration:
"true"` keeps a running migration from ending until removed (tests act during a migration
without timing); `sim.sod.dev/dirty-rate` (bytes/s) overrides the model's dirty rate.

Real guests (issue 18): a VMI annotated `sod.dev/real-vm` (or, without it, one of the first
`PlayerConfig.real_vms` VMIs to start: `sodctl sandbox up --real-vms N`) runs a real guest,
`qemu-system-x86_64` under TCG (sod_testbed.qemu; the guest is built from Debian packages),
instead of the model. The annotation's value is the guest's workload:

    sod.dev/real-vm: idle                  heartbeat only (also "true" or "")
    sod.dev/real-vm: dirty:<MiB/s>:<MiB>   rewrites a working set of <MiB> at <MiB/s> of random
                                           data (`max` or 0: as fast as the vCPU can)

Such a VMI becomes Running only once its guest has booted (a malformed value or a guest that
does not boot: Failed). Its migration is a real pre-copy between two QEMU processes
(sod_testbed.qemu.backend), and step 2 follows QEMU instead of the model: (a) the target's
address and port are written once the destination QEMU listens; (b) the source starts `migrate`
once that is written, and `startTimestamp`/`mode` are written when QEMU reports it running
(`PostCopy` if QEMU switched); (c) the hand-off (`endTimestamp` = QEMU's completion) is written
when QEMU reports completed, as virt-handler writes it when libvirt reports the domain running
on the target; then the guest's console on the destination is checked (alive, intact), and a
guest that fails that check is a dead domain: the VMI is Failed. Anything else (QEMU failed, or
cancelled at `real_timeout_seconds` because pre-copy did not converge) is a failed migration
with QEMU's reason. The hold annotation holds the source before `migrate`; the force-failure
annotation cancels the real pre-copy at once; an abort is honoured until the source starts.
Guests are the player's child processes: a restarted player has lost them, and their VMIs then
migrate by the model. The link is loopback capped at 1 Gbit/s by QEMU (its downtime is not a
1 Gbit/s link's), or with `--real-link netns` (root) one network namespace per node on a
bridge, each node's NIC shaped to 1 Gbit/s by tc, the target's address that of its node.
Each boot and migration is recorded with QEMU's figures in
`<state dir>/handler-player/real-vms.jsonl`.

Not played: domain, guest agent, network and volume status, hotplug, post-copy, heartbeats
(nodes without `kubevirt.io/heartbeat` are never marked unresponsive), node-labeller and device
plugins (nodes.py writes their result once), decentralized migrations.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sod_operator.kube import Informer
from sod_operator.kube import object_key as key_of

from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.kubevirt import HANDLER_SA, NAMESPACE, request_token, write_token_kubeconfig
from sod_testbed.migration_model import MigrationModel, PrecopyPlan, parse_quantity, plan_precopy
from sod_testbed.qemu.backend import Backend, MigrationView, RealGuest
from sod_testbed.qemu.migrate import MigrationOptions
from sod_testbed.qemu.netns import LinkShape, NodeFabric
from sod_testbed.qemu.vm import Workload

log = logging.getLogger("sod.handler_player")

KUBEVIRT = "kubevirt.io/v1"
HANDLER_IMAGE = "quay.io/kubevirt/virt-handler:v1.9.0"
NODE_NAME_LABEL = "kubevirt.io/nodeName"
MIGRATION_TARGET_LABEL = "kubevirt.io/migrationTargetNodeName"
CREATED_BY_LABEL = "kubevirt.io/created-by"
FORCE_MIGRATION_FAILURE_ANNOTATION = "kubevirt.io/func-test-force-launcher-migration-failure"
BRIDGE_MIGRATION_ANNOTATION = "kubevirt.io/allow-pod-bridge-network-live-migration"
EVICTION_SOURCE_ANNOTATION = "kubevirt.io/eviction-source"
HOLD_MIGRATION_ANNOTATION = "sim.sod.dev/hold-migration"
DIRTY_RATE_ANNOTATION = "sim.sod.dev/dirty-rate"
REAL_VM_ANNOTATION = "sod.dev/real-vm"
MIGRATION_PORTS = {"49152": 0, "49153": 0}
DEFAULT_MEMORY = "1Gi"


@dataclass(frozen=True)
class PlayerConfig:
    """Modelled migration durations are multiplied by `time_scale`. `real_vms`: how many VMIs
    (the first to start, not counting those annotated `sod.dev/real-vm`) get a real QEMU guest
    (idle); `real_*`: the real guests' memory cap, pre-copy timeout and QEMU's bandwidth cap,
    and their link: `loopback` (QEMU's cap) or `netns` (a namespace per node on a bridge, each
    node's NIC shaped to the same rate by tc; QEMU's cap off: needs root)."""

    time_scale: float = 1.0
    resync_seconds: float = 2.0
    model: MigrationModel = field(default_factory=MigrationModel)
    real_vms: int = 0
    real_memory_mib: int = 512
    real_timeout_seconds: float = 60.0
    real_bandwidth_bytes: int = 125_000_000  # 1 Gbit/s, as the model's link
    real_link: str = "loopback"

    def argv(self) -> list[str]:
        return [
            f"--time-scale={self.time_scale}",
            f"--resync={self.resync_seconds}",
            f"--bandwidth-bps={self.model.bandwidth_bits_per_second}",
            f"--dirty-rate={self.model.dirty_rate_bytes_per_second}",
            f"--real-vms={self.real_vms}",
            f"--real-memory-mib={self.real_memory_mib}",
            f"--real-timeout={self.real_timeout_seconds}",
            f"--real-link={self.real_link}",
        ]

    def migration_options(self, forced_failure: bool) -> MigrationOptions:
        """A forced failure (KubeVirt's func-test annotation) cancels the real pre-copy at its
        first poll: QEMU itself reports it cancelled."""
        return MigrationOptions(
            max_bandwidth_bytes=None if self.real_link == "netns" else self.real_bandwidth_bytes,
            timeout_seconds=0.0 if forced_failure else self.real_timeout_seconds,
        )


def _ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- pure decisions -----------------------------------------------------------------------------


def live_migratable(vmi: JsonObj) -> JsonObj:
    """virt-handler's `calculateLiveMigrationCondition` (vm.go), in its order, for what a test
    bed VMI can carry."""
    spec = vmi.get("spec") or {}
    domain = spec.get("domain") or {}
    devices = domain.get("devices") or {}
    sec = domain.get("launchSecurity")
    checks = [
        (_network_not_migratable(vmi), "InterfaceNotLiveMigratable"),
        (_host_devices_not_migratable(devices), "HostDeviceNotLiveMigratable"),
        (
            "VMI uses SEV" if sec and ("sev" in sec or "snp" in sec) else None,
            "SEVNotLiveMigratable",
        ),
        ("VMI uses TDX" if sec and "tdx" in sec else None, "TDXNotLiveMigratable"),
        (
            "VMI uses Secure Execution" if sec and spec.get("architecture") == "s390x" else None,
            "SecureExecutionNotLiveMigratable",
        ),
        (
            "VMI uses hyperv passthrough"
            if ((domain.get("features") or {}).get("hypervPassthrough") or {}).get("enabled")
            else None,
            "HypervPassthroughNotLiveMigratable",
        ),
        (_disks_not_migratable(vmi), "DisksNotLiveMigratable"),
    ]
    for message, reason in checks:
        if message:
            return _condition("LiveMigratable", "False", reason, message)
    return _condition("LiveMigratable", "True")


def _condition(ctype: str, status: str, reason: str = "", message: str = "") -> JsonObj:
    cond: JsonObj = {"type": ctype, "status": status, "lastProbeTime": None}
    cond["lastTransitionTime"] = None
    if reason:
        cond["reason"] = reason
        cond["message"] = message
    return cond


def _network_not_migratable(vmi: JsonObj) -> str | None:
    """pkg/network/vmispec/interface.go `VerifyVMIMigratable` (no binding plugins configured)."""
    spec = vmi.get("spec") or {}
    interfaces = ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []
    pod_net = next((n for n in spec.get("networks") or [] if "pod" in n), None)
    if not interfaces or pod_net is None:
        return None
    primary = next((i for i in interfaces if i.get("name") == pod_net.get("name")), None)
    if primary is None:
        return f"no primary interface found for network {pod_net.get('name')}"
    if "masquerade" in primary or "passtBinding" in primary:
        return None
    annotations = vmi["metadata"].get("annotations") or {}
    if "bridge" in primary and BRIDGE_MIGRATION_ANNOTATION in annotations:
        return None
    return (
        "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to "
        "the pod network"
    )


def _host_devices_not_migratable(devices: JsonObj) -> str | None:
    """vm.go `vmiContainsNonMigratablePCIHostDevices` (VGPULiveMigration is not enabled)."""
    if devices.get("hostDevices"):
        return "VMI specifies non-migratable generic PCI host device"
    gpus = devices.get("gpus") or []
    if len(gpus) > 1:
        return "VMI specifies too many GPUs"
    if gpus:
        return "VMI specifies a GPU but feature gate VGPULiveMigration is not enabled"
    return None


def _disks_not_migratable(vmi: JsonObj) -> str | None:
    """vm.go `checkVolumesForMigration`: PVCs must be shared (ReadWriteMany), host disks too."""
    statuses = {s["name"]: s for s in (vmi.get("status") or {}).get("volumeStatus") or []}
    for volume in (vmi.get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}
        ).get("name")
        if claim:
            info = (statuses.get(volume["name"]) or {}).get("persistentVolumeClaimInfo")
            if info is None:
                return (
                    f"cannot migrate VMI: Unable to determine if PVC {claim} is shared, live "
                    "migration requires that all PVCs must be shared (using ReadWriteMany "
                    "access mode)"
                )
            if "ReadWriteMany" not in (info.get("accessModes") or []):
                return (
                    f"cannot migrate VMI: PVC {claim} is not shared, live migration requires "
                    "that all PVCs must be shared (using ReadWriteMany access mode)"
                )
        host_disk = volume.get("hostDisk")
        if host_disk is not None and not host_disk.get("shared"):
            return "cannot migrate VMI with non-shared HostDisk"
    return None


def migration_method(vmi: JsonObj) -> str:
    """BlockMigration when a volume is local to the node (containerDisk, cloud-init, ...)."""
    shared = ("persistentVolumeClaim", "dataVolume", "hostDisk", "configMap", "secret")
    for volume in (vmi.get("spec") or {}).get("volumes") or []:
        if not any(k in volume for k in shared):
            return "BlockMigration"
    return "LiveMigration"


def with_probe_times(conditions: list[JsonObj]) -> list[JsonObj]:
    """Every condition with an explicit `lastProbeTime` (null when unset)."""
    return [{"lastProbeTime": None, **c} for c in conditions]


def merged(obj: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of `patch` onto a copy of `obj` (None deletes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(obj) if isinstance(obj, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


def vmi_memory_bytes(vmi: JsonObj) -> float:
    domain = (vmi.get("spec") or {}).get("domain") or {}
    guest = (domain.get("memory") or {}).get("guest")
    if guest is None:
        guest = ((domain.get("resources") or {}).get("requests") or {}).get(
            "memory", DEFAULT_MEMORY
        )
    return parse_quantity(guest)


def plan_of(vmi: JsonObj, model: MigrationModel) -> PrecopyPlan:
    dirty = (vmi["metadata"].get("annotations") or {}).get(DIRTY_RATE_ANNOTATION)
    return plan_precopy(model, vmi_memory_bytes(vmi), parse_quantity(dirty) if dirty else None)


# ---- pure decisions: real guests (sod_testbed.qemu.backend runs them) ------------------------


def parse_real_vm(value: str) -> Workload:
    """The workload of annotation `sod.dev/real-vm`: `idle` (or `true`), or
    `dirty:<MiB/s>:<working set MiB>` (rate 0 or `max`: as fast as the vCPU can)."""
    text = value.strip().lower()
    if text in ("", "idle", "true"):
        return Workload()
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "dirty":
        try:
            rate = 0 if parts[1] == "max" else int(parts[1])
            return Workload.dirty(rate, int(parts[2]))
        except ValueError as err:
            raise ValueError(f"{REAL_VM_ANNOTATION}={value!r}: {err}") from None
    raise ValueError(
        f"{REAL_VM_ANNOTATION}={value!r}: want idle or dirty:<MiB/s|max>:<working set MiB>"
    )


def choose_backend(vmi: JsonObj, chosen_by_option: int, real_vms: int) -> Workload | None:
    """A real guest's workload for a VMI about to run, or None (the model). The annotation
    decides; without it the first `real_vms` VMIs get an idle real guest. A malformed
    annotation raises ValueError (the VMI fails rather than silently running a model)."""
    value = (vmi["metadata"].get("annotations") or {}).get(REAL_VM_ANNOTATION)
    if value is not None:
        return parse_real_vm(value)
    return Workload() if chosen_by_option < real_vms else None


def guest_memory_mib(vmi: JsonObj, cap_mib: int) -> int:
    """The VMI's guest memory, capped (the machine has 2 cores and the guests share it)."""
    return max(64, min(cap_mib, int(vmi_memory_bytes(vmi) // 2**20)))


@dataclass(frozen=True)
class RealStep:
    """What the player does next for a real migration: `prepare` (start the target QEMU),
    `wait`, `abort` (before the source started), `release` (let the source start), or write
    (`target-ready`, `started`, `succeeded`, `failed`) the migrationState `fields`."""

    action: str
    fields: JsonObj = field(default_factory=dict)


def real_migration_step(
    state: JsonObj, view: MigrationView | None, held: bool, aborted: bool
) -> RealStep:
    """virt-handler's steps (see the module docstring, 2.a-c) for a real migration: each write
    follows what QEMU reported, as `view` shows it; timestamps are QEMU's moments."""
    if view is None:
        return RealStep("abort") if aborted else RealStep("prepare")
    if view.outcome == "failed":
        reason = "Migration aborted" if aborted and not view.started_at else view.reason
        fields = {"failed": True, "completed": True, "failureReason": reason}
        if aborted:
            fields["abortStatus"] = "Succeeded"
        return RealStep("failed", {**fields, "endTimestamp": _epoch_ts(view.ended_at)})
    if not state.get("targetNodeAddress"):
        if view.target_port is None:
            return RealStep("wait")
        ports = {str(view.target_port): 0}
        return RealStep(
            "target-ready",
            {"targetNodeAddress": view.target_address, "targetDirectMigrationNodePorts": ports},
        )
    if not view.released:
        return RealStep("abort" if aborted else "wait" if held else "release")
    if not state.get("startTimestamp"):
        if view.started_at is None:
            return RealStep("wait")
        return RealStep(
            "started", {"startTimestamp": _epoch_ts(view.started_at), "mode": view.mode}
        )
    if view.outcome == "ok":
        return RealStep("succeeded", {"endTimestamp": _epoch_ts(view.ended_at)})
    return RealStep("wait")


def _epoch_ts(t: float | None) -> str:
    moment = dt.datetime.now(dt.UTC) if t is None else dt.datetime.fromtimestamp(t, dt.UTC)
    return _ts(moment)


# ---- the player ---------------------------------------------------------------------------------


def _uid(vmi: JsonObj) -> str:
    return str(vmi["metadata"].get("uid", ""))


def _final(vmi: JsonObj) -> bool:
    phase = (vmi.get("status") or {}).get("phase")
    return bool(vmi["metadata"].get("deletionTimestamp")) or phase in ("Succeeded", "Failed")


def _label(key: str) -> Callable[[JsonObj], str | None]:
    """An indexer by the value of one label."""
    return lambda obj: (obj["metadata"].get("labels") or {}).get(key)


class HandlerPlayer:
    def __init__(self, kubeconfig: Path, state_dir: Path, config: PlayerConfig | None = None):
        self.config = config or PlayerConfig()
        self.state_dir = state_dir
        self.admin = KubeApi(kubeconfig, user_agent="virt-handler-player")
        self._stop = threading.Event()
        self._wake = threading.Event()
        # One pass of the loop per batch of events: any event (or SYNCED) wakes it.
        self.vmis = Informer(
            self.admin,
            resource_path(KUBEVIRT, "virtualmachineinstances"),
            handler=lambda _etype, _obj: self._wake.set(),
            stop=self._stop,
        )
        self.pods = Informer(
            self.admin,
            resource_path("v1", "pods"),
            handler=lambda _etype, _obj: self._wake.set(),
            stop=self._stop,
            label_selector="kubevirt.io=virt-launcher",
            indexers={"created-by": _label(CREATED_BY_LABEL)},
        )
        self._handlers: dict[str, KubeApi] = {}
        self._since: dict[tuple[str, str], float] = {}  # (migration uid, step) -> monotonic
        self._thread = threading.Thread(target=self._loop, name="handler-player", daemon=True)
        self._next_due: float | None = None
        self.backend = Backend(state_dir, self._wake.set, self._fabric())  # by VMI uid
        self._chosen: set[str] = set()  # VMI uids given a real guest by `real_vms`

    # ---- lifecycle ----

    def _fabric(self) -> NodeFabric | None:
        if self.config.real_link == "netns":
            rate = self.config.real_bandwidth_bytes * 8
            return NodeFabric(LinkShape(rate_bits=rate))
        return None

    def start(self, wait_synced: float = 30.0) -> HandlerPlayer:
        for inf in (self.vmis, self.pods):
            inf.start()
        for inf in (self.vmis, self.pods):
            if not inf.synced.wait(wait_synced):
                raise RuntimeError(f"handler player: could not list {inf.path} in {wait_synced}s")
        self._thread.start()
        log.info("handler player started: %s", self.config)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.admin.close_watches()
        for api in self._handlers.values():
            api.close_watches()
        for thread in (self._thread, self.vmis.thread, self.pods.thread):
            if thread.is_alive():
                thread.join(timeout=10)
        self.backend.stop()

    def run_forever(self) -> None:
        self.start()
        while not self._stop.is_set():
            self._stop.wait(1.0)
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._next_due = time.monotonic() + self.config.resync_seconds
            for vmi in self.vmis.items():
                try:
                    self.sync(vmi)
                except ApiError as err:  # a conflict or a refusal: the next pass re-reads
                    log.log(
                        logging.DEBUG if err.status == 409 else logging.WARNING,
                        "VMI %s/%s: %s",
                        *key_of(vmi),
                        err,
                    )
                    self._due(0.2 if err.status == 409 else 1.0)
                except Exception:
                    log.exception("VMI %s/%s: sync failed", *key_of(vmi))
                    self._due(1.0)
            self.backend.reap({_uid(v) for v in self.vmis.items() if not _final(v)})
            self._wake.wait(max(0.0, self._next_due - time.monotonic()))
            time.sleep(0.01)  # coalesce a burst of watch events into one pass

    def _due(self, seconds: float) -> None:
        t = time.monotonic() + max(0.0, seconds)
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    # ---- node identities ----

    def handler(self, node: str) -> KubeApi:
        """The API as this node's virt-handler (a token bound to its virt-handler pod)."""
        api = self._handlers.get(node)
        if api is None:
            pod = self._handler_pod(node)
            token = request_token(self.admin, HANDLER_SA, bound_pod=pod)
            path = write_token_kubeconfig(
                self.state_dir / "handler-player" / f"{node}.kubeconfig",
                self.admin.host,
                self._ca_file(),
                token,
                f"virt-handler@{node}",
            )
            api = self._handlers[node] = KubeApi(path, user_agent=f"virt-handler/{node}")
        return api

    def _ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def _handler_pod(self, node: str) -> JsonObj:
        name = f"virt-handler-{node}"
        path = resource_path("v1", "pods", NAMESPACE, name)
        pod = self.admin.get_or_none(path)
        if pod is not None and (pod.get("spec") or {}).get("nodeName") == node:
            return pod
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {"kubevirt.io": "virt-handler"},
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": HANDLER_SA,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "virt-handler", "image": HANDLER_IMAGE}],
            },
        }
        return self.admin.create(resource_path("v1", "pods", NAMESPACE), body)

    def _write(self, node: str, vmi: JsonObj, patch: JsonObj) -> None:
        """`patch` (merge-patch semantics) applied to the VMI as read, written back as `node`'s
        handler with an Update, as virt-handler does (its role grants update, not patch): a
        stale read is a 409 Conflict, retried from the next pass."""
        ns, name = key_of(vmi)
        written = self.handler(node).request(
            "PUT",
            resource_path(KUBEVIRT, "virtualmachineinstances", ns, name),
            body=merged(vmi, patch),
        )
        self.vmis.put(written)

    # ---- one VMI ----

    def sync(self, vmi: JsonObj) -> None:
        status = vmi.get("status") or {}
        if _final(vmi):
            return
        if self._real_guest_died(vmi):
            return
        state = status.get("migrationState") or {}
        if status.get("phase") == "Scheduled":
            self._start_vm(vmi)
        elif status.get("phase") == "Running" and state.get("targetNode"):
            self._migrate(vmi, state)

    def _start_vm(self, vmi: JsonObj) -> None:
        status = vmi["status"]
        node = status.get("nodeName")
        if not node or (vmi["metadata"].get("labels") or {}).get(NODE_NAME_LABEL) != node:
            return
        if not self._real_guest_ready(vmi, node):
            return
        now = _ts(dt.datetime.now(dt.UTC))
        conditions = [
            c for c in status.get("conditions") or [] if c.get("type") != "LiveMigratable"
        ]
        conditions.append(live_migratable(vmi))
        transitions = list(status.get("phaseTransitionTimestamps") or [])
        transitions.append({"phase": "Running", "phaseTransitionTimestamp": now})
        self._write(
            node,
            vmi,
            {
                "status": {
                    "phase": "Running",
                    "phaseTransitionTimestamps": transitions,
                    "selinuxContext": "none",
                    "migrationMethod": migration_method(vmi),
                    "conditions": with_probe_times(conditions),
                }
            },
        )
        log.info("VMI %s/%s: Running on %s", *key_of(vmi), node)

    def _real_guest_ready(self, vmi: JsonObj, node: str) -> bool:
        """False while a real guest is still booting (one that failed is `_real_guest_died`).
        True for a model-backed VMI."""
        uid = _uid(vmi)
        guest = self.backend.guests.get(uid)
        if guest is None:
            live = self._chosen & set(self.backend.guests)
            try:
                workload = choose_backend(vmi, len(live), self.config.real_vms)
            except ValueError as err:
                self._fail_vmi(node, vmi, str(err))
                return False
            if workload is None:
                return True
            if REAL_VM_ANNOTATION not in (vmi["metadata"].get("annotations") or {}):
                self._chosen.add(uid)
            memory = guest_memory_mib(vmi, self.config.real_memory_mib)
            self.backend.boot("/".join(key_of(vmi)), uid, node, workload, memory)
            log.info(
                "VMI %s/%s: booting a real guest (%s) on %s", *key_of(vmi), workload.name, node
            )
            return False
        return guest.ready

    def _real_guest_died(self, vmi: JsonObj) -> bool:
        """A real guest that failed (it never booted, or failed its check after a hand-off):
        the VMI is Failed, as virt-handler reports a domain that never started or died."""
        guest = self.backend.guests.get(_uid(vmi))
        if guest is None or not guest.error:
            return False
        self._fail_vmi(str(vmi["status"].get("nodeName", "")), vmi, guest.error)
        return True

    def _fail_vmi(self, node: str, vmi: JsonObj, reason: str) -> None:
        transitions = list((vmi.get("status") or {}).get("phaseTransitionTimestamps") or [])
        now = _ts(dt.datetime.now(dt.UTC))
        transitions.append({"phase": "Failed", "phaseTransitionTimestamp": now})
        self._write(
            node, vmi, {"status": {"phase": "Failed", "phaseTransitionTimestamps": transitions}}
        )
        log.error("VMI %s/%s: Failed: %s", *key_of(vmi), reason)

    def _migrate(self, vmi: JsonObj, state: JsonObj) -> None:
        source, target = str(state.get("sourceNode", "")), str(state["targetNode"])
        uid = state.get("migrationUid", "")
        if state.get("completed"):
            self._after(vmi, state, source, target)
            return
        if state.get("endTimestamp") and not state.get("failed"):
            self._state(target, vmi, {"completed": True})  # finalizeMigration
            return
        guest = self.backend.guests.get(_uid(vmi))
        if guest is not None:
            self._migrate_real(vmi, state, guest, source, target)
            return
        if state.get("abortRequested"):
            self._end_failed(vmi, source, "Migration aborted", aborted=True)
            return
        plan = plan_of(vmi, self.config.model)
        scale = self.config.time_scale
        if not state.get("targetNodeAddress"):
            if self._waited(uid, "setup", plan.setup_seconds * scale):
                self._state(
                    target,
                    vmi,
                    {
                        "targetNodeAddress": "127.0.0.1",
                        "targetDirectMigrationNodePorts": MIGRATION_PORTS,
                    },
                )
            return
        if not state.get("startTimestamp"):
            self._state(
                source, vmi, {"startTimestamp": _ts(dt.datetime.now(dt.UTC)), "mode": "PreCopy"}
            )
            return
        if (vmi["metadata"].get("annotations") or {}).get(HOLD_MIGRATION_ANNOTATION) == "true":
            return
        if not self._waited(
            uid, "transfer", (plan.transfer_seconds + plan.downtime_seconds) * scale
        ):
            return
        forced = (vmi["metadata"].get("annotations") or {}).get(FORCE_MIGRATION_FAILURE_ANNOTATION)
        if forced == "true" or not plan.converged:
            reason = (
                f"forced by annotation {FORCE_MIGRATION_FAILURE_ANNOTATION}"
                if forced == "true"
                else "migration did not converge within completionTimeoutPerGiB"
            )
            self._end_failed(vmi, source, reason, aborted=False)
            return
        self._handoff(vmi, source, target, _ts(dt.datetime.now(dt.UTC)))

    def _handoff(self, vmi: JsonObj, source: str, target: str, end: str) -> None:
        # virt-handler's ackMigrationCompletion also clears the evacuation it served (the
        # node name and the eviction-source annotation): left set, virt-controller marks the
        # new launcher pod "eviction in progress" and the descheduler ignores it for good.
        self._write(  # ackMigrationCompletion + updateStatus on the target
            target,
            vmi,
            {
                "metadata": {
                    "labels": {NODE_NAME_LABEL: target},
                    "annotations": {EVICTION_SOURCE_ANNOTATION: None},
                },
                "status": {
                    "nodeName": target,
                    "evacuationNodeName": None,
                    "migrationState": {
                        "targetNodeDomainDetected": True,
                        "targetNodeDomainReadyTimestamp": end,
                        "endTimestamp": end,
                    },
                },
            },
        )
        log.info("VMI %s/%s: migrated %s -> %s", *key_of(vmi), source, target)

    def _migrate_real(
        self, vmi: JsonObj, state: JsonObj, guest: RealGuest, source: str, target: str
    ) -> None:
        """A real pre-copy: every write follows the QEMU migration's state (real_migration_step)."""
        uid = str(state.get("migrationUid", ""))
        annotations = vmi["metadata"].get("annotations") or {}
        job = guest.migrations.get(uid)
        step = real_migration_step(
            state,
            job.view() if job else None,
            held=annotations.get(HOLD_MIGRATION_ANNOTATION) == "true",
            aborted=bool(state.get("abortRequested")),
        )
        if step.action == "prepare":
            forced = annotations.get(FORCE_MIGRATION_FAILURE_ANNOTATION) == "true"
            guest.migrate(uid, target, self.config.migration_options(forced))
        elif step.action == "release" and job is not None:
            job.release()
        elif step.action == "abort":
            if job is None:
                self._end_failed(vmi, source, "Migration aborted", aborted=True)
            else:
                job.abort()
        elif step.action in ("target-ready", "started", "failed"):
            self._state(target if step.action == "target-ready" else source, vmi, step.fields)
            if step.action == "failed":
                log.info("VMI %s/%s: real migration failed: %s", *key_of(vmi), step.fields)
        elif step.action == "succeeded":
            self._handoff(vmi, source, target, step.fields["endTimestamp"])
        # "wait": the backend wakes the loop on every change of the migration's state

    def _end_failed(self, vmi: JsonObj, source: str, reason: str, aborted: bool) -> None:
        fields: JsonObj = {
            "failed": True,
            "completed": True,
            "endTimestamp": _ts(dt.datetime.now(dt.UTC)),
            "failureReason": reason,
        }
        if aborted:
            fields["abortStatus"] = "Succeeded"
        self._state(source, vmi, fields)
        log.info("VMI %s/%s: migration failed on %s: %s", *key_of(vmi), source, reason)

    def _after(self, vmi: JsonObj, state: JsonObj, source: str, target: str) -> None:
        """After the end: the launcher that lost exits; the target drops its label."""
        failed = bool(state.get("failed"))
        self._launcher_exits(vmi, state.get("targetPod") if failed else state.get("sourcePod"))
        labels = vmi["metadata"].get("labels") or {}
        if not failed and MIGRATION_TARGET_LABEL in labels:
            self._write(target, vmi, {"metadata": {"labels": {MIGRATION_TARGET_LABEL: None}}})
        for step in ("setup", "transfer"):
            self._since.pop((state.get("migrationUid", ""), step), None)

    def _launcher_exits(self, vmi: JsonObj, pod_name: str | None) -> None:
        """The kubelet's report of a virt-launcher that exited 0 (kwok plays no process)."""
        ns = vmi["metadata"]["namespace"]
        pod = self.pods.get(ns, pod_name) if pod_name else None
        if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        now = _ts(dt.datetime.now(dt.UTC))
        statuses = [
            {
                **s,
                "ready": False,
                "started": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}},
            }
            for s in (pod.get("status") or {}).get("containerStatuses") or []
        ]
        written = self.admin.merge_patch(
            resource_path("v1", "pods", ns, pod_name, "status"),
            {"status": {"phase": "Succeeded", "containerStatuses": statuses}},
        )
        self.pods.put(written)

    def _state(self, node: str, vmi: JsonObj, fields: JsonObj) -> None:
        self._write(node, vmi, {"status": {"migrationState": fields}})

    def _waited(self, uid: str, step: str, seconds: float) -> bool:
        began = self._since.setdefault((uid, step), time.monotonic())
        left = seconds - (time.monotonic() - began)
        if left > 0:
            self._due(left)
        return left <= 0


# ---- process entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    d = PlayerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sod_testbed.handler_player",
        description="Play KubeVirt's virt-handler for the sandbox's kwok nodes.",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--time-scale", type=float, default=d.time_scale)
    parser.add_argument("--resync", type=float, default=d.resync_seconds)
    parser.add_argument("--bandwidth-bps", type=float, default=d.model.bandwidth_bits_per_second)
    parser.add_argument("--dirty-rate", type=float, default=d.model.dirty_rate_bytes_per_second)
    parser.add_argument("--real-vms", type=int, default=d.real_vms)
    parser.add_argument("--real-memory-mib", type=int, default=d.real_memory_mib)
    parser.add_argument("--real-timeout", type=float, default=d.real_timeout_seconds)
    parser.add_argument("--real-link", choices=("loopback", "netns"), default=d.real_link)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = PlayerConfig(
        time_scale=args.time_scale,
        resync_seconds=args.resync,
        model=MigrationModel(
            bandwidth_bits_per_second=args.bandwidth_bps,
            dirty_rate_bytes_per_second=args.dirty_rate,
        ),
        real_vms=args.real_vms,
        real_memory_mib=args.real_memory_mib,
        real_timeout_seconds=args.real_timeout,
        real_link=args.real_link,
    )
    player = HandlerPlayer(args.kubeconfig, args.state_dir, config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("handler player: signal %d, stopping", signum)
        player._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    player.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
