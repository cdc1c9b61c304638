"""Tunables of relocation planning, with KubeVirt's defaults (shared notes: kubevirt.md §1.6, §8).

One frozen value object, built once by `sod-operator` from its flags and passed to the planner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RelocationSettings:
    max_migrations_per_cluster: int = 5
    """KubeVirt's `parallelMigrationsPerCluster` default: more would only queue inside KubeVirt."""
    max_outbound_per_node: int = 2
    """KubeVirt's `parallelOutboundMigrationsPerNode` default."""
    retry_base_seconds: float = 10.0
    """Back-off after the first failed migration; doubles per further failure."""
    retry_max_seconds: float = 300.0
    """Cap of the back-off."""
    node_cooldown_seconds: float = 300.0
    """A node that lost a verified profile this recently is not chosen as a migration target
    while another compliant node exists (anti-flapping)."""
    mtd_budget: int = 1
    """How many moving-target-defense migrations may run at once, cluster-wide."""
    mtd_retry_seconds: float = 60.0
    """When a due moving-target move cannot run (no slot, no other node), look again after this."""
    history_limit: int = 10
    """Relocation records kept in `status.history` (the schema allows 16)."""
    resync_seconds: float = 60.0
    """Every SecureVM is re-planned at least this often (level-triggered safety net): bounds
    how long a missed event leaves a claim wrong; why 60 s: `policy.resync`."""

    def backoff(self, failures: int) -> float:
        """Seconds to wait before retrying after `failures` consecutive failed attempts."""
        if failures <= 0:
            return 0.0
        return float(min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (failures - 1)))
