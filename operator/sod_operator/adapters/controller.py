"""The operator's runtime, as thin glue: watch events → world → queue → plans → executor.

* `observe` (called by kopf's index and event handlers) decodes one object
  (`policy.observed`), folds it into the `World` and marks the SecureVMs it affects. Node
  label events are handled here directly: no per-SecureVM watch, no periodic scan, so a
  revocation reaches the planner within one event.
* `run` takes batches from the queue (`adapters.queue`: urgent keys first, at most `chunk`
  per batch so a 20,000-SecureVM start-up never starves the event loop), plans each batch at
  once with `policy.fleet.plan_batch` (slots across VMs) and hands each plan to the executor
  (`adapters.executor`) in its own task. The queue never hands out a key that is still being
  executed; keys marked meanwhile are planned again after.
* Everything is level-triggered: on restart the world is rebuilt from the watches' initial
  listings (kopf's indexes hold the handlers back until every kind is listed; with
  `await_renewals`, the verifier's renewals ConfigMap must be listed too), every SecureVM
  is re-planned, and a relocation recorded in status is resumed under its recorded name.
* A verified profile's expiry is its verdict's `expiryTime`, moved later by the verifier's fleet
  renewal of the same evidence (`observe_renewals`); the controller keeps each node's verified
  verdicts and the renewals, and recomputes a node's expiries when either changes.

Resource versions are compared per object so that a watch event older than our own write
never rolls the world back (that could make the planner forget a migration it just started).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sod_operator.adapters.executor import Executor, MigrationRefused, Outcome, VMRejected
from sod_operator.adapters.metrics import Metrics
from sod_operator.adapters.profile_status import ProfileStatus
from sod_operator.adapters.queue import PlanQueue
from sod_operator.api.v1alpha1.nodeattestation import Renewal, RenewalList
from sod_operator.api.v1alpha1.parsing import ManifestError
from sod_operator.api.v1alpha1.securevm import SecureVMStatus
from sod_operator.kube import AsyncKube as Kube
from sod_operator.kube import EventRecorder
from sod_operator.kube.workqueue import WorkQueue
from sod_operator.policy.fleet import plan_batch
from sod_operator.policy.observed import (
    Kind,
    VerifiedVerdicts,
    effective_expiries,
    generation,
    launcher_pod_from_body,
    migration_from_body,
    node_from_body,
    object_key,
    package_from_body,
    profile_from_body,
    resource_version,
    securevm_from_body,
    verified_verdicts,
    vm_from_body,
    vmi_from_body,
)
from sod_operator.policy.plan import CreateMigration, Plan
from sod_operator.policy.resync import correction
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.world import Key, World

__all__ = ["Controller", "Kind"]
log = logging.getLogger("sod.controller")
Json = dict[str, Any]
T = TypeVar("T")
LISTING = "kopf's listing of every kind"
RENEWALS = "the renewals ConfigMap"


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        queue: WorkQueue[Key] | None = None,
        await_renewals: bool = False,
    ):
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.world = World()
        self.ready = asyncio.Event()
        self._stopped = stopped or threading.Event()
        self.queue = PlanQueue(queue if queue is not None else WorkQueue(), chunk)
        self.executor = Executor(kube, events, metrics, self)
        self.profiles = ProfileStatus(kube, self.world)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[Key] = set()
        """SecureVMs denied a migration slot: planned again when a migration ends."""
        self._dispatched: dict[Key, list[CreateMigration]] = {}
        """Granted migrations not created yet. They hold their slot until created (then the
        world counts them) or abandoned."""
        self._rvs: dict[tuple[Kind, str, str], int] = {}
        self._resync_only: set[Key] = set()
        """Keys marked by the periodic re-check and by nothing else since: what their plan
        corrects is counted (`policy.resync`)."""
        self._verdicts: dict[str, VerifiedVerdicts] = {}
        """Each node's verified verdicts: its expiries are recomputed from them on a renewal."""
        self._renewals: dict[str, Renewal] = {}
        self._unsynced = {LISTING, RENEWALS} if await_renewals else {LISTING}
        """What planning still waits for: acting on status expiries before the renewals are
        known would void every renewed verdict at start-up and relocate the fleet."""
        metrics.bind(self.world, lambda: len(self.world.active_migrations))

    @property
    def suspended(self) -> bool:
        """True once leadership is lost or the operator stops: no write is started any more."""
        return self._stopped.is_set()

    # ------------------------------------------------------------------ observing

    def _fresh(self, kind: Kind, body: Mapping[str, Any]) -> bool:
        """False for an event older than what we already hold (e.g. our own write's answer)."""
        rv = resource_version(body)
        if rv is None:
            return True
        key = (kind, *object_key(body))
        if rv < self._rvs.get(key, -1):
            return False
        self._rvs[key] = rv
        return True

    def observe(self, kind: Kind, body: Mapping[str, Any], deleted: bool = False) -> None:
        """Fold one watched object (or its deletion) into the world; mark what it affects."""
        if deleted:
            self._rvs.pop((kind, *object_key(body)), None)
        elif not self._fresh(kind, body):
            return
        affected = self._fold(kind, body, deleted)
        if affected is None:
            return
        self.mark(affected)

    def _fold(self, kind: Kind, body: Mapping[str, Any], deleted: bool) -> set[Key] | None:
        """The world after one object; the SecureVMs affected (None: nothing changed)."""
        w, key = self.world, object_key(body)
        match kind:
            case Kind.NODE:
                return self._fold_node(body, deleted)
            case Kind.ATTESTATION:
                return self._fold_attestation(key[1], body, deleted)
            case Kind.PROFILE:
                return self._fold_profile(body, deleted)
            case Kind.PACKAGE:
                return w.apply_package(key[1], None if deleted else _spec(package_from_body, body))
            case Kind.SECUREVM:
                return self._fold_securevm(key, body, deleted)
            case Kind.VM:
                return w.apply_vm(key, None if deleted else vm_from_body(body))
            case Kind.VMI:
                return w.apply_vmi(key, None if deleted else vmi_from_body(body))
            case Kind.POD:
                return w.apply_launcher_pod(key, None if deleted else launcher_pod_from_body(body))
            case Kind.MIGRATION:
                was_active = key in w.active_migrations
                affected = w.apply_migration(key, None if deleted else migration_from_body(body))
                if was_active and key not in w.active_migrations:
                    # A slot freed up: the SecureVMs waiting for one are planned again.
                    affected |= self._waiting
                return affected

    def _fold_node(self, body: Mapping[str, Any], deleted: bool) -> set[Key]:
        node, w = node_from_body(body), self.world
        before = w.nodes[node.name].verified if node.name in w.nodes else frozenset()
        labels = None if deleted else dict(node.labels)
        affected = w.apply_node(node.name, labels, node.schedulable, self.clock(), node.taints)
        after = w.nodes[node.name].verified if node.name in w.nodes else frozenset()
        self.profiles.dirty |= before ^ after
        return affected

    def _fold_attestation(self, name: str, body: Mapping[str, Any], deleted: bool) -> set[Key]:
        if deleted:
            self._verdicts.pop(name, None)
        else:
            self._verdicts[name] = verified_verdicts(body)
        return self._apply_expiries(name)

    def _apply_expiries(self, name: str) -> set[Key]:
        """The node's effective expiries into the world (its verdicts with its renewal)."""
        view = self._verdicts.get(name)
        expiries = None if view is None else effective_expiries(view, self._renewals.get(name))
        return self.world.apply_attestation(name, expiries, self.clock())

    def observe_renewals(self, renewals: RenewalList) -> None:
        """The verifier's fleet renewals as now listed (the first call: listed at all).

        Only the nodes whose renewal changed are recomputed; the world wakes the SecureVMs on
        a node whose profile became void or valid again (`World.apply_attestation`)."""
        old, self._renewals = self._renewals, dict(renewals.renewals)
        changed = {
            n for n in old.keys() | self._renewals.keys() if old.get(n) != self._renewals.get(n)
        }
        affected: set[Key] = set()
        for name in changed & self._verdicts.keys():
            affected |= self._apply_expiries(name)
        if affected:
            self.mark(affected)
        self._synced(RENEWALS)

    def _fold_profile(self, body: Mapping[str, Any], deleted: bool) -> set[Key] | None:
        name, gen = object_key(body)[1], generation(body)
        if deleted:
            self.profiles.forget(name)
            return self.world.apply_profile(name, None)
        if gen and name in self.world.profiles and self.profiles.generation.get(name) == gen:
            return None  # a status-only change (e.g. our own verifiedNodes): the spec is the same
        affected = self.world.apply_profile(name, _spec(profile_from_body, body))
        self.profiles.generation[name] = gen
        self.profiles.dirty.add(name)
        return affected

    def _fold_securevm(self, key: Key, body: Mapping[str, Any], deleted: bool) -> set[Key]:
        if deleted:
            self._waiting.discard(key)
            self.queue.settled(key)
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

    # ------------------------------------------------------------------ write-through

    def written(self, kind: Kind, body: Json) -> None:
        """What we wrote is in the world before its watch event arrives."""
        self.observe(kind, body)

    def status_written(self, plan: Plan, body: Json) -> None:
        current = self.world.svms.get(plan.key)
        if current is not None and self._fresh(Kind.SECUREVM, body):
            self.world.update_status(plan.key, replace(current, status=plan.status))

    # ------------------------------------------------------------------ the loop

    def mark(self, keys: Iterable[Key], urgent: bool = True) -> None:
        keys = list(keys)
        self._resync_only.difference_update(keys)
        self.queue.mark(keys, urgent)

    def set_ready(self) -> None:
        """kopf listed every watched kind (called on every event after that)."""
        self._synced(LISTING)

    def _synced(self, what: str) -> None:
        if what not in self._unsynced:
            return
        self._unsynced.discard(what)
        if self._unsynced:
            log.info("%s is in; planning waits for %s", what, ", ".join(sorted(self._unsynced)))
            return
        log.info(
            "world synced: %d nodes, %d profiles, %d SecureVMs, %d renewals; planning starts",
            len(self.world.nodes),
            len(self.world.profiles),
            len(self.world.svms),
            len(self._renewals),
        )
        self.ready.set()
        self.queue.open()

    async def run(self) -> None:
        await self.ready.wait()
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self.queue.collect()),
            loop.create_task(self._resync()),
            loop.create_task(self.profiles.loop(lambda: self.suspended)),
        ]
        try:
            while True:
                batch = await self.queue.next_batch()
                if self.suspended:
                    for key in batch:
                        self.queue.done(key)
                    continue
                self._plan_and_execute(batch)
                await asyncio.sleep(0)  # let kopf's watchers breathe between chunks
        finally:
            self.queue.shutdown()  # ends the collector's wait (it waits in a thread)
            for task in helpers:
                task.cancel()

    async def _resync(self) -> None:
        # Level-triggered safety net: every SecureVM is re-planned now and then (background).
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            # Keys already waiting are planned anyway; the others are planned for the
            # re-check alone, and what their plans correct is counted.
            fresh = [k for k in self.world.all_keys() if not self.queue.pending(k)]
            self.mark(fresh, urgent=False)
            self._resync_only.update(fresh)

    def _plan_and_execute(self, batch: list[Key]) -> None:
        started = time.perf_counter()
        now = self.clock()
        snapshot = self.world.snapshot(now)
        observations = {}
        for key in batch:
            obs = self.world.observation(key, snapshot)
            if obs is None:
                self.queue.done(key)  # deleted meanwhile
            else:
                observations[key] = obs
        waiting_outside = len(self._waiting - set(observations))
        dispatched = (m for ms in self._dispatched.values() for m in ms)
        in_flight = self.world.in_flight(waiting_outside).plus(dispatched)
        result = plan_batch(observations, in_flight, self.settings, now)
        self._waiting = (self._waiting - set(observations)) | set(result.waiting)
        self.metrics.planning.observe(time.perf_counter() - started)
        for key, plan in result.plans.items():
            self._count_correction(key, plan, observations[key].svm.status)
            # The planner says who is starved of nodes: the world wakes them on a new node.
            (self.world.starved.add if plan.starved else self.world.starved.discard)(key)
            if plan.settled:
                self.queue.settled(key)
            if plan.migrations:
                # In flight from the grant on: a batch planned while the create call is
                # still pending must not hand its slot out again.
                self._dispatched[key] = plan.migrations
            task = asyncio.get_running_loop().create_task(self._execute(plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _count_correction(self, key: Key, plan: Plan, current: SecureVMStatus) -> None:
        if key in self._resync_only:
            self._resync_only.discard(key)
            what = correction(current, plan)
            if what is not None:
                self.metrics.resync_corrections.labels(what=what).inc()
                log.warning("%s/%s: the periodic re-check corrected %s", *key, what)

    async def _execute(self, plan: Plan) -> None:
        key = plan.key
        try:
            if self.suspended or key not in self.world.svms:
                return
            outcome = await self.executor.run(plan, self.queue.since(key), lambda: self.suspended)
            if outcome is Outcome.GONE:
                return
            if outcome is Outcome.MIGRATION_CREATED:
                self.queue.settled(key)
            self.queue.succeeded(key)
            if plan.requeue_after is not None:
                self.queue.later(key, plan.requeue_after)
        except VMRejected as err:
            svm = self.world.svms.get(key)
            if svm is not None:
                self.world.vm_rejections[key] = (svm.uid, svm.generation, err.message)
            self.mark([key])  # re-plan at once: the status says why there is no VM
        except MigrationRefused as err:
            svm = self.world.svms.get(key)
            if svm is not None:
                self.world.migration_refusals[key] = (svm.uid, err.name, err.message)
            log.warning("%s/%s: migration %s refused: %s", *key, err.name, err.message)
            self.mark([key])  # re-plan at once: the attempt fails and backs off
        except Exception as err:
            self.metrics.api_errors.labels(action=type(err).__name__).inc()
            log.warning("executing the plan of %s/%s failed: %s; retrying", *key, err)
            self.queue.retry(key)
        finally:
            self._dispatched.pop(key, None)
            self.queue.done(key)

    # ------------------------------------------------------------------ shutdown

    async def stop(self) -> None:
        self._stopped.set()
        self.queue.shutdown()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self.executor.events.drain()

    def queue_depth(self) -> int:
        return self.queue.depth()


def _spec(decode: Callable[[Mapping[str, Any]], T], body: Mapping[str, Any]) -> T | None:
    """The spec of a profile or package; None (ignored, with a warning) when it is invalid."""
    try:
        return decode(body)
    except ManifestError as err:
        kind = body.get("kind") or "object"
        log.warning("%s %s ignored: %s", kind, object_key(body)[1], err)
        return None
