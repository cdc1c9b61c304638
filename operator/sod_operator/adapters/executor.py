"""Carry out one plan against the API: status first, then the actions in order, then Events.

The executor decides nothing: every action carries what its call needs (`policy.plan`), so
this is a `match` over the action types. The status goes first because it records a
migration's name before the migration exists (a restarted operator re-creates the same name
and gets 409 AlreadyExists, which counts as success). What the apiserver answers is handed to
`WriteThrough` (the controller folds it into its world before the watch event arrives); the
executor itself holds no world and writes no policy state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol, assert_never

from sod_operator.adapters.metrics import Metrics
from sod_operator.api.v1alpha1.securevm import RelocationTrigger
from sod_operator.kube import KUBEVIRT, ApiError, EventRecorder
from sod_operator.kube import AsyncKube as Kube
from sod_operator.policy.observed import Kind
from sod_operator.policy.plan import (
    Action,
    CreateMigration,
    CreateVM,
    PatchVM,
    Plan,
    RelocationFinished,
    RelocationStarted,
    ReplaceVMSpec,
    RestartVMI,
    Signal,
    TimeToCompliance,
    status_body,
)

log = logging.getLogger("sod.controller")
Json = dict[str, Any]


class Outcome(Enum):
    DONE = "done"
    MIGRATION_CREATED = "migration created"
    GONE = "gone"
    """The SecureVM no longer exists (its status write found nothing)."""


class VMRejected(Exception):
    """The apiserver refused the VM made from a SecureVM's template (400/422): no retry helps
    until the tenant changes the SecureVM."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MigrationRefused(Exception):
    """virt-api refused to admit a migration (its VMIM create admitter: the VMI is not running,
    not live-migratable, or one is already in flight). Re-sending the same body at once would
    be refused again: the planner closes the attempt and backs off."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def refused_at_admission(err: ApiError) -> bool:
    """An admission webhook's denial (KubeVirt answers 422 Invalid; other admitters 400/403)."""
    return err.status in (400, 422) or (err.status == 403 and "denied" in err.message)


class WriteThrough(Protocol):
    def written(self, kind: Kind, body: Json) -> None:
        """An object as the apiserver answered our write."""

    def status_written(self, plan: Plan, body: Json) -> None:
        """The SecureVM after our status write (`plan.status` is what it holds now)."""


class Executor:
    def __init__(
        self, kube: Kube, events: EventRecorder, metrics: Metrics, write_through: WriteThrough
    ) -> None:
        self.kube = kube
        self.events = events
        self.metrics = metrics
        self.write_through = write_through

    async def run(self, plan: Plan, since: float | None, suspended: Callable[[], bool]) -> Outcome:
        """Execute `plan`; `since`: when its trigger was observed (for the reaction metric);
        `suspended()`: True once no write may start any more (leadership lost)."""
        if plan.write_status and not await self._write_status(plan):
            return Outcome.GONE
        outcome = Outcome.DONE
        for action in plan.actions:
            if suspended():
                break
            if await self._run_action(plan, action, since):
                outcome = Outcome.MIGRATION_CREATED
        ns, name = plan.key
        for ev in plan.events:
            self.events.post(ns, name, plan.uid, str(ev.type), ev.reason, ev.message)
        for signal in plan.signals:
            self._record(signal)
        self.metrics.protected.update(plan.key, plan.protected_by)
        return outcome

    async def _write_status(self, plan: Plan) -> bool:
        """Replace the SecureVM's status; False when the SecureVM is gone."""
        ns, name = plan.key
        started = time.monotonic()
        try:
            body = await self.kube.replace_status(ns, name, status_body(plan.status))
        except ApiError as err:
            if err.not_found:
                return False
            raise
        self.write_through.status_written(plan, body)
        if plan.creates_migration:
            ms = 1000 * (time.monotonic() - started)
            log.info("%s/%s: relocation recorded in status (%.1f ms)", ns, name, ms)
        return True

    async def _run_action(self, plan: Plan, action: Action, since: float | None) -> bool:
        """Run one action; True when it created a migration."""
        ns = plan.key[0]
        match action:
            case CreateMigration():
                return await self._create_migration(ns, action, since)
            case CreateVM():
                await self._create_vm(ns, action)
            case PatchVM():
                body = await self.kube.merge_patch(
                    KUBEVIRT, "virtualmachines", ns, action.name, action.patch
                )
                self.write_through.written(Kind.VM, body)
            case ReplaceVMSpec():
                await self._replace_vm_spec(ns, action)
            case RestartVMI():
                await self.kube.delete(
                    KUBEVIRT, "virtualmachineinstances", ns, action.name, uid=action.uid
                )
            case _:
                assert_never(action)
        return False

    async def _create_migration(
        self, ns: str, action: CreateMigration, since: float | None
    ) -> bool:
        started = time.monotonic()
        try:
            body = await self.kube.create(
                KUBEVIRT, "virtualmachineinstancemigrations", ns, action.body
            )
        except ApiError as err:
            if refused_at_admission(err):
                raise MigrationRefused(action.name, err.message) from err
            if not err.already_exists:
                raise
            log.info("migration %s/%s already exists (created before a restart)", ns, action.name)
            return False
        done = time.monotonic()
        # Reaction time is trigger → first migration; retries and periodic moves are not.
        mtd = action.trigger is RelocationTrigger.MOVING_TARGET_DEFENSE
        if since is not None and action.attempt <= 1 and not mtd:
            self.metrics.reaction.labels(trigger=str(action.trigger)).observe(done - since)
        self.write_through.written(Kind.MIGRATION, body)
        log.info(
            "created migration %s/%s (%s, attempt %d): %.1f ms after the trigger was "
            "observed (create call %.1f ms)",
            ns,
            action.name,
            action.trigger,
            action.attempt,
            1000 * (done - since) if since is not None else float("nan"),
            1000 * (done - started),
        )
        return True

    async def _create_vm(self, ns: str, action: CreateVM) -> None:
        try:
            body = await self.kube.create(KUBEVIRT, "virtualmachines", ns, action.body)
        except ApiError as err:
            if err.status in (400, 422):
                # KubeVirt's schema refused the template: say so in the SecureVM's status
                # instead of retrying every few seconds (found by the reliability suite).
                raise VMRejected(err.message) from err
            if not err.already_exists:
                raise
            return
        self.write_through.written(Kind.VM, body)

    async def _replace_vm_spec(self, ns: str, action: ReplaceVMSpec) -> None:
        # The template is the whole truth: replace the spec (a merge patch would keep keys
        # the tenant removed), then record which template it came from.
        ops: list[Json] = [{"op": "replace", "path": "/spec", "value": action.spec}]
        await self.kube.json_patch(KUBEVIRT, "virtualmachines", ns, action.name, ops)
        annotate = {"metadata": {"annotations": dict(action.annotations)}}
        body = await self.kube.merge_patch(KUBEVIRT, "virtualmachines", ns, action.name, annotate)
        self.write_through.written(Kind.VM, body)

    def _record(self, signal: Signal) -> None:
        match signal:
            case RelocationStarted(trigger=trigger):
                self.metrics.relocations_started.labels(trigger=str(trigger)).inc()
            case RelocationFinished(trigger=trigger, result=result):
                self.metrics.relocations_finished.labels(
                    trigger=str(trigger), result=str(result)
                ).inc()
            case TimeToCompliance(seconds=seconds):
                self.metrics.time_to_compliance.observe(seconds)
            case _:
                assert_never(signal)
