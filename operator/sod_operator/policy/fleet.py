"""Plan every SecureVM affected by one event at once, within KubeVirt's migration limits.

`plan_batch` runs `reconcile` for each affected SecureVM; those that warrant a migration ask
for a slot. Slots are granted most sensitive first (then longest non-compliant, then name),
within the per-cluster limit and the per-source-node outbound limit (KubeVirt's defaults:
5 and 2), counting migrations already in flight. Moving target defense gets slots only from
its own cluster-wide budget and only when no security relocation is waiting or running: a
periodic move never delays, nor overlaps, a security relocation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from sod_operator.policy.plan import CreateMigration, Observation, Plan, SlotKind, SlotRequest
from sod_operator.policy.relocation import reconcile
from sod_operator.policy.settings import RelocationSettings

Key = tuple[str, str]


@dataclass(frozen=True)
class InFlight:
    """Migrations KubeVirt is running now (ours and others'), by source node."""

    total: int = 0
    by_node: Mapping[str, int] = field(default_factory=dict)
    security: int = 0
    """Of ours: security relocations (their presence holds moving target defense back)."""
    moving_target: int = 0
    security_waiting: int = 0
    """Security relocations waiting for a slot outside this batch."""

    def plus(self, started: Iterable[CreateMigration]) -> InFlight:
        """These counts plus migrations started but not yet seen in the world: each holds its
        slot (cluster, source node, kind) from the grant on."""
        by_node: Counter[str] = Counter(self.by_node)
        total = security = moving = 0
        for migration in started:
            total += 1
            by_node[migration.source_node] += 1
            if migration.slot is SlotKind.MOVING_TARGET:
                moving += 1
            else:
                security += 1
        if not total:
            return self
        return replace(
            self,
            total=self.total + total,
            by_node=by_node,
            security=self.security + security,
            moving_target=self.moving_target + moving,
        )


@dataclass(frozen=True)
class Batch:
    plans: dict[Key, Plan]
    granted: list[Key]
    waiting: list[Key]
    """Keys that warrant a migration but got no slot: re-plan them when a slot frees up."""


def _priority(item: tuple[Key, SlotRequest]) -> tuple[int, int, datetime, Key]:
    key, req = item
    return (0 if req.kind is SlotKind.SECURITY else 1, -req.sensitivity, req.since, key)


def allocate(
    requests: Iterable[tuple[Key, SlotRequest]], in_flight: InFlight, cfg: RelocationSettings
) -> tuple[list[Key], list[Key]]:
    """Grant slots in priority order; returns (granted, denied)."""
    total = in_flight.total
    by_node: Counter[str] = Counter(in_flight.by_node)
    mtd = in_flight.moving_target
    granted: list[Key] = []
    denied: list[Key] = []
    security_waiting = in_flight.security_waiting > 0
    for key, req in sorted(requests, key=_priority):
        if req.kind is SlotKind.MOVING_TARGET and (
            security_waiting or in_flight.security > 0 or mtd >= cfg.mtd_budget
        ):
            denied.append(key)
            continue
        if (
            total >= cfg.max_migrations_per_cluster
            or by_node[req.source_node] >= cfg.max_outbound_per_node
        ):
            denied.append(key)
            security_waiting = security_waiting or req.kind is SlotKind.SECURITY
            continue
        granted.append(key)
        total += 1
        by_node[req.source_node] += 1
        if req.kind is SlotKind.MOVING_TARGET:
            mtd += 1
        else:
            # A granted security migration is in flight from now on: MTD waits for it too.
            security_waiting = True
    return granted, denied


def plan_batch(
    observations: Mapping[Key, Observation],
    in_flight: InFlight,
    cfg: RelocationSettings,
    now: datetime,
) -> Batch:
    """Plans for all `observations`, with migration slots allocated across them."""
    plans = {k: reconcile(o, cfg, now) for k, o in observations.items()}
    requests = [(k, p.slot_request) for k, p in plans.items() if p.slot_request is not None]
    # Relocations recorded before a restart and created now, without a new grant, hold their
    # slots too (without this a restarted operator granted the same slots again: 3 outbound
    # from one node, limit 2, seen by the reliability suite).
    resumed = (m for p in plans.values() if p.slot_request is None for m in p.migrations)
    granted, denied = allocate(requests, in_flight.plus(resumed), cfg)
    for key in granted:
        plans[key] = reconcile(observations[key], cfg, now, slot_granted=True)
    return Batch(plans=plans, granted=granted, waiting=denied)
