"""The verifier's Prometheus metrics, on its own `CollectorRegistry` (never the global one).

Label sets are bounded: reasons are the `AttestationReason` enum, profiles are the catalog's
names, results are two values. Node names never become labels (fleets are large); per-node
state is in each NodeAttestation's status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
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


class Metrics:
    def __init__(self, verified_nodes: Callable[[], Mapping[str, int]]) -> None:
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
        r.register(_VerifiedNodes(verified_nodes))
