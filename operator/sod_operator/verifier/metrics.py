"""The verifier's Prometheus metrics, on its own `CollectorRegistry` (never the global one).

Label sets are bounded: reasons are the `AttestationReason` enum, profiles are the catalog's
names, results are two values. Node names never become labels (fleets are large); per-node
state is in each NodeAttestation's status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
AGE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 900)


class _VerifiedNodes(Collector):
    """`sod_attestation_verified_nodes{profile}` computed at scrape time from the caches."""

    def __init__(self, snapshot: Callable[[], Mapping[str, int]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "sod_attestation_verified_nodes",
            "Nodes on which the verifier currently verifies each profile.",
            labels=["profile"],
        )
        for profile, count in sorted(self._snapshot().items()):
            family.add_metric([profile], count)
        yield family


@dataclass(frozen=True)
class EvidenceAge:
    """Per profile: the oldest evidence behind a node's verdict, and how many are overdue."""

    oldest_seconds: float
    overdue_nodes: int
    freshness_seconds: float


class _EvidenceAges(Collector):
    """`sod_attestation_evidence_oldest_age_seconds{profile}`, `…_overdue_nodes{profile}` and
    `sod_attestation_freshness_bound_seconds{profile}`, computed at scrape time. Per profile, not
    per node: node names never become labels; `kubectl get nodeattestations` names the nodes."""

    def __init__(self, snapshot: Callable[[], Mapping[str, EvidenceAge]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        oldest = GaugeMetricFamily(
            "sod_attestation_evidence_oldest_age_seconds",
            "Age of the oldest evidence behind any node's verdict on each profile.",
            labels=["profile"],
        )
        overdue = GaugeMetricFamily(
            "sod_attestation_evidence_overdue_nodes",
            "Nodes whose newest evidence for each profile is older than its freshness bound.",
            labels=["profile"],
        )
        bound = GaugeMetricFamily(
            "sod_attestation_freshness_bound_seconds",
            "Each profile's evidence freshness bound (freshnessSeconds).",
            labels=["profile"],
        )
        for profile, age in sorted(self._snapshot().items()):
            oldest.add_metric([profile], age.oldest_seconds)
            overdue.add_metric([profile], age.overdue_nodes)
            bound.add_metric([profile], age.freshness_seconds)
        yield from (oldest, overdue, bound)


class _Ready(Collector):
    """`sod_attestation_verifier_ready`: 1 once this replica's caches are synced (`/readyz`).
    Served before that too, so an alert can tell "scraped but not ready" from "not running"."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "sod_attestation_verifier_ready",
            "1 when this verifier replica is ready (its caches are synced), else 0.",
            value=1 if self._ready() else 0,
        )


class Metrics:
    def __init__(
        self,
        verified_nodes: Callable[[], Mapping[str, int]],
        evidence_ages: Callable[[], Mapping[str, EvidenceAge]] = dict,
        ready: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.evidence = Counter(
            "sod_attestation_evidence_total",
            "New evidence processed, by evidence-level result (Verified or the rejection reason).",
            ["reason"],
            registry=r,
        )
        self.transitions = Counter(
            "sod_attestation_verdict_transitions_total",
            "Per-profile verdict changes (verified=true: granted, false: revoked).",
            ["profile", "verified", "reason"],
            registry=r,
        )
        self.label_changes = Counter(
            "sod_attestation_label_changes_total",
            "Node trust labels added or removed by the verifier.",
            ["action"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "sod_attestation_step_seconds",
            "Time of one pure verification step (identity, quote, every profile).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.evidence_age = Histogram(
            "sod_attestation_evidence_age_seconds",
            "Age of new evidence on arrival: now minus when its nonce was issued.",
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.api_errors = Counter(
            "sod_attestation_api_errors_total",
            "Failed Kubernetes API calls (retried), by operation.",
            ["operation"],
            registry=r,
        )
        self.conflicts = Counter(
            "sod_attestation_status_conflicts_total",
            "Status writes that lost an optimistic-concurrency race (redone on fresh data).",
            registry=r,
        )
        self.notifications = Counter(
            "sod_attestation_notifications_total",
            "Trust webhook notices by result: delivered, failed (after retries), dropped "
            "(queue full).",
            ["result"],
            registry=r,
        )
        self.notification_attempts = Counter(
            "sod_attestation_notification_attempts_total",
            "Trust webhook HTTP attempts by outcome: ok, retry (5xx, 408, 429, no answer), error.",
            ["outcome"],
            registry=r,
        )
        self.renewal_writes = Counter(
            "sod_attestation_renewal_writes_total",
            "Writes of the fleet's renewals ConfigMap (one for every node renewed meanwhile).",
            registry=r,
        )
        self.renewals_due = Gauge(
            "sod_attestation_renewals_due",
            "1 while a due expiry renewal waits to be written to the renewals ConfigMap, else 0.",
            registry=r,
        )
        for result in ("delivered", "failed", "dropped"):
            self.notifications.labels(result)
        for outcome in ("ok", "retry", "error"):
            self.notification_attempts.labels(outcome)
        r.register(_VerifiedNodes(verified_nodes))
        r.register(_EvidenceAges(evidence_ages))
        r.register(_Ready(ready))


def evidence_ages(
    statuses: Iterable[Mapping[str, Any]], freshness: Mapping[str, int], now: datetime
) -> dict[str, EvidenceAge]:
    """Per profile with a freshness bound: the oldest `evidenceTime` among the nodes' verdicts,
    and how many are older than the bound. Reads raw status dicts (no model parse per scrape)."""
    ages: dict[str, list[float]] = {p: [] for p in freshness}
    for status in statuses:
        for verdict in status.get("verdicts") or ():
            profile, stamp = verdict.get("profile"), verdict.get("evidenceTime")
            if profile not in ages or not isinstance(stamp, str):
                continue
            try:
                when = datetime.fromisoformat(stamp)
            except ValueError:
                continue
            ages[profile].append((now - when).total_seconds())
    return {
        p: EvidenceAge(
            oldest_seconds=max(a, default=0.0),
            overdue_nodes=sum(1 for x in a if x > freshness[p]),
            freshness_seconds=float(freshness[p]),
        )
        for p, a in ages.items()
    }
