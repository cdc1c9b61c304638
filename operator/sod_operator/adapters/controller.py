"""The operator's runtime: watch events → in-memory world → planning batches → API writes.

* `observe` (called by kopf's index and event handlers) folds one object into the `World` and
  marks the SecureVMs it affects dirty. Node label events are handled here directly: no
  per-SecureVM watch, no periodic scan, so a revocation reaches the planner within one event.
* `run` drains the dirty set in batches (urgent keys first, at most `chunk` per batch so a
  20,000-SecureVM start-up never starves the event loop), plans the batch at once with
  `policy.fleet.plan_batch` (slots across VMs) and executes each plan in its own task. One
  SecureVM is never executed twice concurrently; keys marked meanwhile are re-planned after.
* A plan is executed as: status first (it records a migration's name before the migration
  exists), then actions in order, then Events (fire-and-forget). 409 AlreadyExists on create
  is success: the deterministic name proves it is ours.
* Everything is level-triggered: on restart the world is rebuilt from the watches' initial
  listings (kopf's indexes hold the handlers back until every kind is listed), every SecureVM
  is re-planned, and a relocation recorded in status is resumed under its recorded name.

Resource versions are compared per object so that a watch event older than our own write
never rolls the world back (that could make the planner forget a migration it just started).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sod_operator.adapters.metrics import Metrics
from sod_operator.api.conditions import ConditionType, Reason
from sod_operator.api.v1alpha1.parsing import ManifestError, parse_model
from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.securevm import RelocationTrigger
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.kube import KUBEVIRT, SOD, ApiError, EventRecorder
from sod_operator.kube import AsyncKube as Kube
from sod_operator.policy.fleet import InFlight, plan_batch
from sod_operator.policy.observed import (
    TRIGGER_LABEL,
    launcher_pod_from_body,
    migration_from_body,
    vm_from_body,
    vmi_from_body,
)
from sod_operator.policy.plan import (
    CreateMigration,
    CreateVM,
    PatchVM,
    Plan,
    ReplaceVMSpec,
    RestartVMI,
    securevm_from_body,
    status_body,
)
from sod_operator.policy.resync import correction
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.world import Key, World

log = logging.getLogger("sod.controller")
Json = dict[str, Any]
ERROR_RETRY_SECONDS = 5.0


class Kind(StrEnum):
    NODE = "Node"
    PROFILE = "ServerSecurityProfile"
    PACKAGE = "SecurityPackage"
    SECUREVM = "SecureVM"
    VM = "VirtualMachine"
    VMI = "VirtualMachineInstance"
    MIGRATION = "VirtualMachineInstanceMigration"
    POD = "Pod"
    """virt-launcher pods only: where the scheduler bound each VMI (issue 19)."""


def _rv(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion", ""))
    except (TypeError, ValueError):
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


# What still wakes the planner in `periodic_only` mode: KubeVirt continuing a relocation.
_CONTINUATIONS = frozenset({Kind.VM, Kind.VMI, Kind.MIGRATION, Kind.POD})


class _VMRejected(Exception):
    """The apiserver refused the VM made from a SecureVM's template (recorded in the world)."""


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: RelocationSettings,
        metrics: Metrics,
        events: EventRecorder,
        *,
        chunk: int = 500,
        clock: Callable[[], datetime] = _utcnow,
        stopped: threading.Event | None = None,
        react_to_nodes: bool = True,
    ):
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.chunk = chunk
        self.clock = clock
        self.world = World()
        self.ready = asyncio.Event()
        self._stopped = stopped or threading.Event()
        self.react_to_nodes = react_to_nodes
        """False only for the benchmark's baseline: node changes wait for the periodic resync,
        the way a descheduler-style loop would see them."""
        self._wake = asyncio.Event()
        self._urgent: dict[Key, float] = {}
        self._background: dict[Key, float] = {}
        self._executing: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._waiting: set[Key] = set()
        self._trigger_t0: dict[Key, float] = {}
        self._rvs: dict[tuple[Kind, str, str], int] = {}
        self._dispatched: dict[Key, tuple[str, bool]] = {}
        """Granted migrations not created yet: (source node, moving target defense). They
        hold their slot until created (then the world counts them) or abandoned."""
        self._profile_dirty: set[str] = set()
        self._profile_generation: dict[str, int] = {}
        self._profile_written: dict[str, tuple[int, int]] = {}
        self._resync_only: set[Key] = set()
        """Keys marked by the periodic re-check and by nothing else since: what their plan
        corrects is counted (`policy.resync`)."""
        metrics.bind(self.world, lambda: len(self.world.active_migrations))

    @property
    def suspended(self) -> bool:
        """True once leadership is lost or the operator stops: no write is started any more."""
        return self._stopped.is_set()

    # ------------------------------------------------------------------ observing

    def _fresh(self, kind: Kind, ns: str, name: str, body: Mapping[str, Any]) -> bool:
        """False for an event older than what we already hold (e.g. our own write's answer)."""
        rv = _rv(body)
        if rv is None:
            return True
        key = (kind, ns, name)
        if rv < self._rvs.get(key, -1):
            return False
        self._rvs[key] = rv
        return True

    def observe(self, kind: Kind, body: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold one watched object (or its deletion) into the world; mark what it affects."""
        meta = body.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if deleted:
            self._rvs.pop((kind, ns, name), None)
        elif not self._fresh(kind, ns, name, body):
            return
        now = self.clock()
        w = self.world
        affected: set[Key]
        if kind is Kind.NODE:
            spec = body.get("spec") or {}
            labels = None if deleted else dict(meta.get("labels") or {})
            before = w.nodes[name].verified if name in w.nodes else frozenset()
            schedulable = not spec.get("unschedulable")
            affected = w.apply_node(name, labels, schedulable, now, spec.get("taints") or ())
            after = w.nodes[name].verified if name in w.nodes else frozenset()
            self._profile_dirty |= before ^ after
            if not self.react_to_nodes:
                affected = set()
        elif kind is Kind.PROFILE:
            generation = int(meta.get("generation") or 0)
            if (
                not deleted
                and generation
                and name in w.profiles
                and self._profile_generation.get(name) == generation
            ):
                return  # a status-only change (e.g. our own verifiedNodes): the spec is the same
            affected = w.apply_profile(name, None if deleted else self._parse_profile(body))
            if deleted:
                self._profile_generation.pop(name, None)
                self._profile_written.pop(name, None)
            else:
                self._profile_generation[name] = generation
                self._profile_dirty.add(name)
        elif kind is Kind.PACKAGE:
            affected = w.apply_package(name, None if deleted else self._parse_package(body))
        elif kind is Kind.SECUREVM:
            affected = self._observe_securevm((ns, name), body, deleted)
        elif kind is Kind.VM:
            affected = w.apply_vm((ns, name), None if deleted else vm_from_body(body))
        elif kind is Kind.VMI:
            affected = w.apply_vmi((ns, name), None if deleted else vmi_from_body(body))
        elif kind is Kind.POD:
            pod = None if deleted else launcher_pod_from_body(body)
            affected = w.apply_launcher_pod((ns, name), pod)
        else:
            was_active = (ns, name) in w.active_migrations
            affected = w.apply_migration((ns, name), None if deleted else migration_from_body(body))
            if was_active and (ns, name) not in w.active_migrations:
                # A slot freed up: the SecureVMs waiting for one are planned again.
                affected = affected | self._waiting
        if self.settings.periodic_only:
            # The benchmarks' periodic baseline: the next full pass finds any change; only
            # KubeVirt's progress on a relocation that a pass started wakes the planner.
            if kind not in _CONTINUATIONS:
                return
            affected = {k for k in affected if self._relocating(k)}
        self.mark(affected)

    def _relocating(self, key: Key) -> bool:
        svm = self.world.svms.get(key)
        return svm is not None and (
            svm.status.non_compliant_since is not None or svm.status.relocation is not None
        )

    def _observe_securevm(self, key: Key, body: Mapping[str, Any], deleted: bool) -> set[Key]:
        if deleted:
            self._cancel_timer(key)
            self._waiting.discard(key)
            self._trigger_t0.pop(key, None)
            self.metrics.protected.update(key, None)
            return self.world.apply_securevm(key, None)
        view = securevm_from_body(body)
        old = self.world.svms.get(key)
        affected = self.world.apply_securevm(key, view)
        if old is not None and old.generation == view.generation and old.status == view.status:
            # Metadata-only change, or the echo of our own status write: only other claimants
            # of the VM whose owner changed (none, normally).
            return affected - {key}
        return affected

    @staticmethod
    def _parse_profile(body: Mapping[str, Any]) -> ServerSecurityProfileSpec | None:
        try:
            return parse_model(ServerSecurityProfileSpec, body.get("spec"), "spec")
        except ManifestError as err:
            log.warning(
                "ServerSecurityProfile %s ignored: %s",
                (body.get("metadata") or {}).get("name"),
                err,
            )
            return None

    @staticmethod
    def _parse_package(body: Mapping[str, Any]) -> SecurityPackageSpec | None:
        try:
            return parse_model(SecurityPackageSpec, body.get("spec"), "spec")
        except ManifestError as err:
            log.warning(
                "SecurityPackage %s ignored: %s", (body.get("metadata") or {}).get("name"), err
            )
            return None

    # ------------------------------------------------------------------ the queue

    def mark(self, keys: Iterable[Key], urgent: bool = True) -> None:
        t = time.monotonic()
        queue = self._urgent if urgent and self.ready.is_set() else self._background
        added = False
        keys = list(keys)
        self._resync_only.difference_update(keys)
        for key in keys:
            if key not in self._urgent and key not in self._background:
                queue[key] = t
                added = True
            self._trigger_t0.setdefault(key, t)
        if added:
            self._wake.set()

    def set_ready(self) -> None:
        if not self.ready.is_set():
            log.info(
                "world synced: %d nodes, %d profiles, %d SecureVMs; planning starts",
                len(self.world.nodes),
                len(self.world.profiles),
                len(self.world.svms),
            )
            self.ready.set()
            self._wake.set()

    def _take(self) -> dict[Key, float]:
        """Up to `chunk` dirty keys, urgent first; keys still executing wait for the next turn."""
        batch: dict[Key, float] = {}
        for queue in (self._urgent, self._background):
            busy: list[tuple[Key, float]] = []
            while queue and len(batch) < self.chunk:
                key = next(iter(queue))
                t = queue.pop(key)
                if key in self._executing:
                    busy.append((key, t))
                else:
                    batch[key] = t
            for key, t in busy:
                queue.setdefault(key, t)
            if len(batch) >= self.chunk:
                break
        return batch

    def _schedule(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        current = self._timers.get(key)
        if current is not None:
            if current[0] <= due:
                return
            current[1].cancel()
        self._timers[key] = (due, loop.call_later(delay, self._fire, key))

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        if key in self.world.svms:
            self.mark([key])

    def _cancel_timer(self, key: Key) -> None:
        current = self._timers.pop(key, None)
        if current is not None:
            current[1].cancel()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        await self.ready.wait()
        resync = asyncio.get_running_loop().create_task(self._resync())
        profiles = asyncio.get_running_loop().create_task(self._profile_status_loop())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while not self.suspended:
                    batch = self._take()
                    if not batch:
                        break
                    self._plan_and_execute(batch)
                    await asyncio.sleep(0)  # let kopf's watchers breathe between chunks
        finally:
            resync.cancel()
            profiles.cancel()

    async def _resync(self) -> None:
        # Level-triggered safety net: every SecureVM is re-planned now and then (background).
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            keys = [k for k in self.world.all_keys() if k not in self._urgent]
            fresh = [k for k in keys if k not in self._background]
            self.mark(keys, urgent=False)
            self._resync_only.update(fresh)

    async def _profile_status_loop(self, period: float = 1.0) -> None:
        """`ServerSecurityProfile.status.verifiedNodes`, off the hot path and at most once a
        second per profile (a flapping node must not turn into a write storm)."""
        while True:
            await asyncio.sleep(period)
            if self.suspended or not self._profile_dirty:
                continue
            dirty, self._profile_dirty = self._profile_dirty, set()
            for name in sorted(dirty):
                if name not in self._profile_generation:
                    continue  # not (or no longer) a profile: a label without a profile
                want = (len(self.world.by_profile.get(name, ())), self._profile_generation[name])
                if self._profile_written.get(name) == want:
                    continue
                try:
                    await self.kube.merge_patch(
                        SOD,
                        "serversecurityprofiles",
                        "",
                        name,
                        {"status": {"verifiedNodes": want[0], "observedGeneration": want[1]}},
                        "status",
                    )
                except ApiError as err:
                    if not err.not_found:
                        log.warning("could not write the status of profile %s: %s", name, err)
                        self._profile_dirty.add(name)
                    continue
                self._profile_written[name] = want

    def _plan_and_execute(self, batch: dict[Key, float]) -> None:
        started = time.perf_counter()
        now = self.clock()
        snapshot = self.world.snapshot()
        observations = {}
        for key in batch:
            obs = self.world.observation(key, snapshot)
            if obs is not None:
                observations[key] = obs
        waiting_outside = len(self._waiting - set(observations))
        in_flight = self._plus_dispatched(self.world.in_flight(waiting_outside))
        result = plan_batch(observations, in_flight, self.settings, now)
        self._waiting = (self._waiting - set(observations)) | set(result.waiting)
        self.metrics.planning.observe(time.perf_counter() - started)
        for key, plan in result.plans.items():
            self._count_correction(key, plan, observations[key])
            self._note_starved(key, plan)
            self._executing.add(key)
            self._dispatch(key, plan, observations[key])
            task = asyncio.get_running_loop().create_task(self._execute(key, plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _count_correction(self, key: Key, plan: Plan, obs: Any) -> None:
        if key in self._resync_only:
            self._resync_only.discard(key)
            what = correction(obs.svm.status, plan)
            if what is not None:
                self.metrics.resync_corrections.labels(what=what).inc()
                log.warning("%s/%s: the periodic re-check corrected %s", *key, what)

    def _dispatch(self, key: Key, plan: Plan, obs: Any) -> None:
        # A granted migration is in flight from the grant on: a batch planned while its
        # create call is still pending must not hand its slot out again.
        for action in plan.actions:
            if isinstance(action, CreateMigration):
                labels = (action.body.get("metadata") or {}).get("labels") or {}
                mtd = labels.get(TRIGGER_LABEL) == RelocationTrigger.MOVING_TARGET_DEFENSE
                source = obs.vmi.node_name if obs.vmi is not None else None
                self._dispatched[key] = (source or "", mtd)

    def _plus_dispatched(self, base: InFlight) -> InFlight:
        if not self._dispatched:
            return base
        by_node: Counter[str] = Counter(base.by_node)
        moving = 0
        for node, mtd in self._dispatched.values():
            by_node[node] += 1
            moving += mtd
        count = len(self._dispatched)
        return replace(
            base,
            total=base.total + count,
            by_node=by_node,
            security=base.security + count - moving,
            moving_target=base.moving_target + moving,
        )

    def _note_starved(self, key: Key, plan: Plan) -> None:
        st = plan.status
        starved = st.eligible_nodes == 0 or any(
            c.type == ConditionType.RELOCATING and c.reason == Reason.NO_COMPLIANT_NODE
            for c in st.conditions or []
        )
        if starved:
            self.world.starved.add(key)
        else:
            self.world.starved.discard(key)
        quiet = (
            any(
                c.type == ConditionType.COMPLIANT and str(c.status) == "True"
                for c in st.conditions or []
            )
            and not plan.slot_request
            and not plan.creates_migration
        )
        if quiet:
            self._trigger_t0.pop(key, None)

    async def _execute(self, key: Key, plan: Plan) -> None:
        ns, name = key
        try:
            if self.suspended:
                return
            view = self.world.svms.get(key)
            if view is None:
                return
            if plan.status != view.status and not await self._write_status(key, plan):
                return
            await self._run_actions(key, plan)
            for ev in plan.events:
                self.events.post(ns, name, view.uid, str(ev.type), ev.reason, ev.message)
            self._record_signals(key, plan)
            self.metrics.protected.update(
                key,
                plan.status.node_profile
                if any(
                    c.type == ConditionType.COMPLIANT and str(c.status) == "True"
                    for c in plan.status.conditions or []
                )
                else None,
            )
            if plan.requeue_after is not None:
                self._schedule(key, plan.requeue_after)
        except _VMRejected:
            self._schedule(key, 0)  # re-plan at once: the status says why there is no VM
        except Exception as err:
            self.metrics.api_errors.labels(action=type(err).__name__).inc()
            log.warning(
                "executing the plan of %s/%s failed: %s; retrying in %.0f s",
                ns,
                name,
                err,
                ERROR_RETRY_SECONDS,
            )
            self._schedule(key, ERROR_RETRY_SECONDS)
        finally:
            self._executing.discard(key)
            self._dispatched.pop(key, None)
            if key in self._urgent or key in self._background:
                self._wake.set()

    async def _write_status(self, key: Key, plan: Plan) -> bool:
        """Replace the SecureVM's status; False when the SecureVM is gone."""
        ns, name = key
        t_status = time.monotonic()
        try:
            body = await self.kube.replace_status(ns, name, status_body(plan.status))
        except ApiError as err:
            if err.not_found:
                return False
            raise
        current = self.world.svms.get(key)
        if current is not None and self._fresh(Kind.SECUREVM, ns, name, body):
            self.world.update_status(key, replace(current, status=plan.status))
        if plan.creates_migration:
            log.info(
                "%s/%s: relocation recorded in status (%.1f ms)",
                ns,
                name,
                1000 * (time.monotonic() - t_status),
            )
        return True

    async def _run_actions(self, key: Key, plan: Plan) -> None:
        for action in plan.actions:
            if self.suspended:
                return
            await self._run_action(key, action, plan)

    async def _run_action(self, key: Key, action: Any, plan: Plan) -> None:
        ns = key[0]
        if isinstance(action, CreateMigration):
            t_create = time.monotonic()
            try:
                body = await self.kube.create(
                    KUBEVIRT, "virtualmachineinstancemigrations", ns, action.body
                )
            except ApiError as err:
                if not err.already_exists:
                    raise
                log.info(
                    "migration %s/%s already exists (created before a restart)", ns, action.name
                )
                return
            done = time.monotonic()
            t0 = self._trigger_t0.pop(key, None)
            trigger = str(action.body["metadata"]["labels"].get("sod.dev/trigger", ""))
            first_attempt = plan.status.relocation is None or plan.status.relocation.attempt <= 1
            # Reaction time is trigger → first migration; retries and periodic moves are not.
            if (
                t0 is not None
                and first_attempt
                and trigger != RelocationTrigger.MOVING_TARGET_DEFENSE
            ):
                self.metrics.reaction.labels(trigger=trigger).observe(done - t0)
            self._observe_written(Kind.MIGRATION, body)
            log.info(
                "created migration %s/%s (%s, attempt %d): %.1f ms after the trigger was "
                "observed (create call %.1f ms)",
                ns,
                action.name,
                trigger,
                plan.status.relocation.attempt if plan.status.relocation else 1,
                1000 * (done - t0) if t0 is not None else float("nan"),
                1000 * (done - t_create),
            )
        elif isinstance(action, CreateVM):
            try:
                body = await self.kube.create(KUBEVIRT, "virtualmachines", ns, action.body)
            except ApiError as err:
                if err.status in (400, 422) and (svm := self.world.svms.get(key)) is not None:
                    # KubeVirt's schema refused the template: no retry helps until the tenant
                    # changes the SecureVM (a new generation). Say so in its status instead of
                    # retrying every few seconds (found by the reliability suite's bad input).
                    self.world.vm_rejections[key] = (svm.uid, svm.generation, err.message)
                    raise _VMRejected from err
                if not err.already_exists:
                    raise
                return
            self._observe_written(Kind.VM, body)
        elif isinstance(action, PatchVM):
            body = await self.kube.merge_patch(
                KUBEVIRT, "virtualmachines", ns, action.name, action.patch
            )
            self._observe_written(Kind.VM, body)
        elif isinstance(action, ReplaceVMSpec):
            # The template is the whole truth: replace the spec (a merge patch would keep keys
            # the tenant removed), then record which template it came from.
            ops: list[Json] = [{"op": "replace", "path": "/spec", "value": action.spec}]
            await self.kube.json_patch(KUBEVIRT, "virtualmachines", ns, action.name, ops)
            body = await self.kube.merge_patch(
                KUBEVIRT,
                "virtualmachines",
                ns,
                action.name,
                {"metadata": {"annotations": dict(action.annotations)}},
            )
            self._observe_written(Kind.VM, body)
        elif isinstance(action, RestartVMI):
            await self.kube.delete(
                KUBEVIRT, "virtualmachineinstances", ns, action.name, uid=action.uid
            )

    def _observe_written(self, kind: Kind, body: Json) -> None:
        """Write-through: what we wrote is in the world before its watch event arrives."""
        self.observe(kind, body)

    def _record_signals(self, key: Key, plan: Plan) -> None:
        for sig in plan.signals:
            if sig.name == "relocation_started":
                self.metrics.relocations_started.labels(trigger=sig.labels.get("trigger", "")).inc()
            elif sig.name == "relocation_finished":
                self.metrics.relocations_finished.labels(
                    trigger=sig.labels.get("trigger", ""), result=sig.labels.get("result", "")
                ).inc()
            elif sig.name == "time_to_compliance" and sig.seconds is not None:
                self.metrics.time_to_compliance.observe(sig.seconds)
        del key

    # ------------------------------------------------------------------ shutdown

    async def stop(self) -> None:
        self._stopped.set()
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self.events.drain()

    def queue_depth(self) -> int:
        return len(self._urgent) + len(self._background) + len(self._executing)
