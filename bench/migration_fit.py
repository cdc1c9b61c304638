"""The pre-copy model (sod_testbed.migration_model) fitted to real QEMU migrations (pure).

Fit, from the converged runs on the shaped link:
* `setup_seconds` and `link_efficiency`: least squares of the total time on the data sent,
  i.e. total time = setup + data / (efficiency x link rate): intercept (not below 0) and slope.
  Every byte QEMU sends, the stop-and-copy's included, crosses the same link, so the pause is
  not taken out (taking out its time but not its bytes would overstate the link's rate);
* `downtime_floor_seconds`: the median downtime of the idle runs (what an idle guest, with
  nothing left to copy, still pays);
* the guest's own resident memory: the median data sent by the idle runs (a guest fact, used
  for the predictions, not a model default).
Then every configuration is predicted from its guest's measured write rate and working set,
and the table gives measured median, prediction and relative error. Only the total times enter
the regression (and the idle runs' downtime and data): the dirtying guests' downtime and data
sent are predicted, not fitted. The column "fitted without this config" refits on the other
configurations' runs alone: the error for a workload the fit never saw.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from sod_testbed.migration_model import GIB, MigrationModel, plan_precopy


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (xs, ys)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def fit(runs: list[dict[str, Any]], link_bytes_per_second: float) -> dict[str, float]:
    ok = [r for r in runs if r["ok"] and r["link"] == "netns"]
    idle = [r for r in ok if r["workload"] == "idle"]
    if len(ok) < 2 or not idle:
        raise ValueError("need converged idle and dirtying runs on the shaped link to fit")
    xs = [float(r["transferred_bytes"]) for r in ok]
    ys = [r["total_ms"] / 1000.0 for r in ok]
    setup, slope = _line(xs, ys)
    return {
        "setup_seconds": max(setup, 0.0),
        "link_efficiency": 1.0 / (slope * link_bytes_per_second) if slope > 0 else 1.0,
        "downtime_floor_seconds": statistics.median(r["downtime_ms"] for r in idle) / 1000.0,
        "idle_resident_bytes": statistics.median(float(r["transferred_bytes"]) for r in idle),
    }


def predict(cfg: dict[str, Any], params: dict[str, float], link_bps: float) -> dict[str, Any]:
    """The model's plan for one configuration (memory, working set, guest rate, limits)."""
    model = MigrationModel(
        bandwidth_bits_per_second=link_bps,
        link_efficiency=params["link_efficiency"],
        setup_seconds=params["setup_seconds"],
        downtime_floor_seconds=params["downtime_floor_seconds"],
        downtime_target_seconds=cfg["downtime_limit_ms"] / 1000.0,
        working_set_bytes=float(cfg["wss_bytes"]) or None,
        completion_timeout_per_gib=cfg["timeout_s"] * GIB / cfg["memory_bytes"],
    )
    plan = plan_precopy(
        replace(model, dirty_rate_bytes_per_second=0.0),
        cfg["memory_bytes"],
        cfg["rate_bytes"],
        resident_bytes=params["idle_resident_bytes"] + cfg["wss_bytes"],
    )
    return {
        "converged": plan.converged,
        "total_ms": plan.total_seconds * 1000,
        "downtime_ms": plan.downtime_seconds * 1000 if plan.converged else None,
        "data_bytes": plan.data_bytes,
        "syncs": plan.iterations + 2,  # QEMU also syncs at the start and at stop-and-copy
    }


def rel_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured
