"""How long a simulated pre-copy live migration takes: a pure model, no I/O.

Pre-copy (Clark et al., NSDI'05, the algorithm the paper measures, Section VI): round 0 sends the
guest's resident memory; each later round resends what the guest dirtied during the previous
round; when what is left fits in the target downtime, the VM is paused and the rest is sent
(stop-and-copy). If the dirty rate is not below the effective bandwidth the rounds never shrink:
without post-copy or auto-converge (KubeVirt's defaults) the migration is aborted when
`completionTimeoutPerGiB` x guest GiB elapses (KubeVirt default 150 s/GiB).

Default parameters are calibrated on the paper's Table V (1 GiB guests, 1 Gbps link, KVM):
loaded workloads sent 645-800 MB in 7.2-8.9 s with 250-650 ms downtime; the idle server sent
212 MB in 2.6 s. With `resident_fraction` 0.65 (~700 MB of a 1 GiB guest), 80 % of the link
usable, 0.5 s setup and a 2 MB/s dirty rate, a 1 GiB guest migrates in ~7.6 s sending ~712 MB;
`resident_fraction` 0.2 gives the idle row (~2.6 s). The target downtime is QEMU's and
KubeVirt's default, 300 ms (kubevirt.md §1.6).

Two refinements measured on real QEMU pre-copy (bench/migration.py, `make bench-migration`;
BENCHMARKS.md shows the fit of this model to those migrations and its error):

* a guest re-dirties at most its working set per round (`working_set_bytes`): a guest
  rewriting 256 MiB at 300 MiB/s resends 256 MiB per round, not 300 MiB per second of round.
  None (the default) leaves the re-dirtied memory unbounded, as before;
* the stop-and-copy pause has a floor (`downtime_floor_seconds`): the device state and the
  last pages queue behind what already sits in the TCP and link buffers. QEMU counts those
  queued bytes as sent before it stops the guest, so the floor is not added to the transfer:
  the pause overlaps its end, and the whole migration still takes (data sent) / bandwidth.

`calibrated_model()` reads the parameters fitted to this machine's measurements from the
result file; the defaults stay calibrated on the paper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

GIB = 1024**3
MEASURED = Path(__file__).resolve().parents[2] / "bench" / "results" / "migration.json"


@dataclass(frozen=True)
class MigrationModel:
    bandwidth_bits_per_second: float = 1e9
    link_efficiency: float = 0.8
    resident_fraction: float = 0.65
    dirty_rate_bytes_per_second: float = 2e6
    setup_seconds: float = 0.5
    downtime_target_seconds: float = 0.3
    max_iterations: int = 30
    completion_timeout_per_gib: float = 150.0
    working_set_bytes: float | None = None
    downtime_floor_seconds: float = 0.0

    @property
    def effective_bytes_per_second(self) -> float:
        return self.bandwidth_bits_per_second * self.link_efficiency / 8


@dataclass(frozen=True)
class PrecopyPlan:
    """The outcome of one simulated migration (durations in model seconds, before time scaling)."""

    setup_seconds: float
    transfer_seconds: float
    downtime_seconds: float
    data_bytes: float
    iterations: int
    converged: bool

    @property
    def total_seconds(self) -> float:
        """From the migrate command to the VM resumed on the target (Table V's "total time")."""
        return self.setup_seconds + self.transfer_seconds + self.downtime_seconds


def plan_precopy(
    model: MigrationModel,
    memory_bytes: float,
    dirty_rate_bytes_per_second: float | None = None,
    resident_bytes: float | None = None,
) -> PrecopyPlan:
    """Rounds of pre-copy until the rest fits in the downtime target, or the completion timeout.
    `resident_bytes` (default: memory x resident_fraction) is what round 0 sends."""
    if memory_bytes <= 0:
        raise ValueError(f"memory must be positive, got {memory_bytes}")
    bandwidth = model.effective_bytes_per_second
    dirty = model.dirty_rate_bytes_per_second
    if dirty_rate_bytes_per_second is not None:
        dirty = dirty_rate_bytes_per_second
    cap = model.working_set_bytes if model.working_set_bytes is not None else float("inf")
    remaining = memory_bytes * model.resident_fraction if resident_bytes is None else resident_bytes
    budget = bandwidth * model.downtime_target_seconds
    timeout = model.completion_timeout_per_gib * memory_bytes / GIB
    elapsed = 0.0
    sent = 0.0
    iterations = 0
    while remaining > budget and iterations < model.max_iterations:
        seconds = remaining / bandwidth
        if model.setup_seconds + elapsed + seconds > timeout:
            break
        elapsed += seconds
        sent += remaining
        remaining = min(dirty * seconds, cap)
        iterations += 1
    if remaining > budget:
        # Not converging: KubeVirt aborts at the completion timeout (no post-copy by default).
        return PrecopyPlan(
            setup_seconds=model.setup_seconds,
            transfer_seconds=max(timeout - model.setup_seconds, 0.0),
            downtime_seconds=0.0,
            data_bytes=sent,
            iterations=iterations,
            converged=False,
        )
    stop_and_copy = remaining / bandwidth
    pause = max(model.downtime_floor_seconds, stop_and_copy)
    return PrecopyPlan(
        setup_seconds=model.setup_seconds,
        # The part of the pause above the stop-and-copy drains what the rounds already queued.
        transfer_seconds=max(elapsed - (pause - stop_and_copy), 0.0),
        downtime_seconds=pause,
        data_bytes=sent + remaining,
        iterations=iterations,
        converged=True,
    )


def calibrated_model(path: Path = MEASURED, base: MigrationModel | None = None) -> MigrationModel:
    """`base` (default: the paper-calibrated defaults) with the link efficiency, set-up time
    and downtime floor fitted to real QEMU migrations (bench/migration_fit.py, stored in the
    result of `make bench-migration`). Raises FileNotFoundError/KeyError without a fit."""
    doc: dict[str, Any] = json.loads(path.read_text())
    fitted = doc["params"]["fit_parameters"]
    return replace(
        base or MigrationModel(),
        link_efficiency=float(fitted["link_efficiency"]),
        setup_seconds=float(fitted["setup_seconds"]),
        downtime_floor_seconds=float(fitted["downtime_floor_seconds"]),
    )


_SUFFIXES = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "m": 1e-3,
}


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity ("1Gi", "512M", "250m", "2e3") as a number."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if s.endswith(suffix) and s[: -len(suffix)]:
            return float(s[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(s)
