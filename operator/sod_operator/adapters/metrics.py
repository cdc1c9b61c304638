"""Prometheus metrics of the operator: one `CollectorRegistry`, built at start-up, `sod_` prefix.

Every label set is bounded: condition types and statuses, relocation triggers and results
(enums), profile names (the catalog, a handful). Gauges over the fleet are computed at scrape
time from the in-memory world, so the hot path only increments counters and histograms.

| metric | type | labels |
|---|---|---|
| `sod_securevms` | gauge | `condition`, `status` |
| `sod_verified_nodes` | gauge | `profile` |
| `sod_migrations_in_flight` | gauge | — |
| `sod_relocations_started_total` | counter | `trigger` |
| `sod_relocations_finished_total` | counter | `trigger`, `result` |
| `sod_reaction_seconds` | histogram | `trigger` — trigger observed → migration created |
| `sod_time_to_compliance_seconds` | histogram | — non-compliance seen → VMI on a compliant node |
| `sod_protected_vm_seconds_total` | counter | `profile` — billing: VM-seconds on a compliant |
|   |   | node, by the verified profile that justified it |
| `sod_planning_seconds` | histogram | — one planning batch |
| `sod_api_errors_total` | counter | `action` |
| `sod_resync_corrections_total` | counter | `what` (`actions`, `claim`) — what the periodic |
|   |   | full re-check found that no event had (`policy.resync`) |
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    start_http_server,
)
from prometheus_client import (
    Counter as PromCounter,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sod_operator.api.conditions import ConditionType
from sod_operator.policy.world import Key, World

REACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMPLIANCE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass
class ProtectedTime:
    """Billing-style accounting: VM-seconds spent on a compliant node, per justifying profile."""

    clock: Callable[[], float] = time.monotonic
    done: dict[str, float] = field(default_factory=dict)
    running: dict[Key, tuple[str, float]] = field(default_factory=dict)

    def update(self, key: Key, profile: str | None) -> None:
        now = self.clock()
        current = self.running.get(key)
        if current is not None and current[0] == profile:
            return
        if current is not None:
            self.done[current[0]] = self.done.get(current[0], 0.0) + now - current[1]
            del self.running[key]
        if profile is not None:
            self.running[key] = (profile, now)

    def totals(self) -> dict[str, float]:
        now = self.clock()
        out = dict(self.done)
        for profile, since in self.running.values():
            out[profile] = out.get(profile, 0.0) + now - since
        return out


class _WorldCollector(Collector):
    def __init__(
        self,
        world: Callable[[], World | None],
        protected: ProtectedTime,
        in_flight: Callable[[], int],
    ):
        self._world = world
        self._protected = protected
        self._in_flight = in_flight

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        world = self._world()
        svms = GaugeMetricFamily(
            "sod_securevms", "SecureVMs by condition and status", labels=["condition", "status"]
        )
        nodes = GaugeMetricFamily(
            "sod_verified_nodes", "Nodes on which a profile is verified", labels=["profile"]
        )
        counts: Counter[tuple[str, str]] = Counter()
        if world is not None:
            for view in world.svms.values():
                for c in view.status.conditions or []:
                    counts[(c.type, str(c.status))] += 1
            for profile in sorted(world.profiles):
                nodes.add_metric([profile], len(world.by_profile.get(profile, ())))
        for ctype in ConditionType:
            for status in ("True", "False", "Unknown"):
                svms.add_metric([str(ctype), status], counts.get((str(ctype), status), 0))
        yield svms
        yield nodes
        flight = GaugeMetricFamily(
            "sod_migrations_in_flight", "Non-final migrations KubeVirt is running"
        )
        flight.add_metric([], self._in_flight())
        yield flight
        billed = CounterMetricFamily(
            "sod_protected_vm_seconds",
            "VM-seconds spent on a compliant node, by the verified profile that justified it",
            labels=["profile"],
        )
        for profile, seconds in sorted(self._protected.totals().items()):
            billed.add_metric([profile], seconds)
        yield billed


class Metrics:
    """The operator's metrics, registered in their own registry (never the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.relocations_started = PromCounter(
            "sod_relocations_started", "Relocations started", ["trigger"], registry=r
        )
        self.relocations_finished = PromCounter(
            "sod_relocations_finished", "Relocations finished", ["trigger", "result"], registry=r
        )
        self.reaction = Histogram(
            "sod_reaction_seconds",
            "Trigger observed (watch event) to migration created",
            ["trigger"],
            buckets=REACTION_BUCKETS,
            registry=r,
        )
        self.time_to_compliance = Histogram(
            "sod_time_to_compliance_seconds",
            "Non-compliance observed to the VMI running on a compliant node",
            buckets=COMPLIANCE_BUCKETS,
            registry=r,
        )
        self.planning = Histogram(
            "sod_planning_seconds",
            "Duration of one planning batch",
            buckets=REACTION_BUCKETS,
            registry=r,
        )
        self.api_errors = PromCounter("sod_api_errors", "Failed API writes", ["action"], registry=r)
        self.resync_corrections = PromCounter(
            "sod_resync_corrections",
            "Re-plans of the periodic full re-check that acted or changed a SecureVM's claim",
            ["what"],
            registry=r,
        )
        self.protected = ProtectedTime()
        self._world: World | None = None
        self._in_flight: Callable[[], int] = lambda: 0
        r.register(_WorldCollector(lambda: self._world, self.protected, lambda: self._in_flight()))

    def bind(self, world: World, in_flight: Callable[[], int]) -> None:
        self._world = world
        self._in_flight = in_flight

    def serve(self, port: int, address: str) -> None:
        start_http_server(port, addr=address, registry=self.registry)
