"""Per-stage reaction timelines (issue 15, item 1), shared by the reaction benchmark and the
descheduler baseline so both report the same spans in the same words.

A `Timeline` maps a stage name to the wall-clock time (`time.time()`, epoch seconds) at which
the benchmark observed that stage of one trial; a stage never observed is absent. The stage
names are fixed here, shared by every benchmark that reports a timeline; a trial that starts
later than the first stage (a label removed by hand instead of broken evidence) simply has no
entry for the stages before its start.

Pure: no clock, no cluster; the benchmarks observe, this module only summarises.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from bench.stats import summarize

Timeline = dict[str, float]

REVOCATION_STAGES: tuple[str, ...] = (
    "evidence_changed",
    "verdict_written",
    "label_removed",
    "vmim_created",
    "target_scheduled",
    "migration_started",
    "vm_running",
)
"""Trust revoked: the node's evidence breaks -> ... -> the VM runs on a compliant node."""

REQUEST_STAGES: tuple[str, ...] = (
    "request_raised",
    "vmim_created",
    "target_scheduled",
    "migration_started",
    "vm_running",
)
"""Request raised: the SecureVM (or the VM's affinity) is patched -> ... -> VM running."""

DECISION_STAGES: tuple[str, ...] = ("label_removed", "request_raised")
"""Where the decision to move is made, per trigger: the span decision -> migration_started is
the one that corresponds to the paper's 2.33 s (migrate command -> migration under way)."""

PAPER_END = "migration_started"
PAPER_SECONDS = 2.33
"""The paper's OpenStack prototype: the time it added to trigger a migration (Section VI)."""

COLUMNS = ("span", "n", "p50 (ms)", "p99 (ms)", "min (ms)", "max (ms)")


def decision_stage(stages: Sequence[str]) -> str:
    """The stage of `stages` at which the move is decided (label_removed / request_raised)."""
    for stage in stages:
        if stage in DECISION_STAGES:
            return stage
    raise ValueError(f"no decision stage among {list(stages)}")


def span_ms(timelines: Sequence[Timeline], start: str, end: str) -> list[float]:
    """Milliseconds from `start` to `end` in every timeline that observed both."""
    return [(t[end] - t[start]) * 1000.0 for t in timelines if start in t and end in t]


def _row(timelines: Sequence[Timeline], start: str, end: str, kind: str) -> dict[str, Any]:
    samples = span_ms(timelines, start, end)
    return {
        "span": f"{start} -> {end}",
        "from": start,
        "to": end,
        "kind": kind,
        "n": len(samples),
        "unit": "ms",
        "samples": samples,
        "summary": summarize(samples) if samples else None,
    }


def span_summaries(timelines: Sequence[Timeline], stages: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per span: every step between adjacent stages ("step"), then the cumulative
    span from the first stage to each later one ("cumulative"), then the span the paper's
    figure corresponds to, decision -> migration_started ("paper"), when `stages` has both.

    A timeline contributes to a span only if it observed both ends; `n` says how many did, and
    `summary` (bench.stats.summarize of the milliseconds) is None when none did.
    """
    stages = list(stages)
    rows = [_row(timelines, a, b, "step") for a, b in pairwise(stages)]
    rows += [_row(timelines, stages[0], b, "cumulative") for b in stages[2:]]
    decision = next((s for s in stages if s in DECISION_STAGES), None)
    if decision is not None and PAPER_END in stages:
        rows.append(_row(timelines, decision, PAPER_END, "paper"))
    return rows


def _cells(row: dict[str, Any]) -> list[Any]:
    label = {"step": "", "cumulative": "total ", "paper": "decision: "}[row["kind"]]
    s = row["summary"]
    if s is None:
        return [label + row["span"], 0, "-", "-", "-", "-"]
    return [label + row["span"], row["n"], s["median"], s["p99"], s["min"], s["max"]]


def timeline_table(
    title: str, timelines: Sequence[Timeline], stages: Sequence[str], note: str = ""
) -> dict[str, Any]:
    """A table for `Result.tables` (the shape `Result.add_table` makes): one row per span of
    `span_summaries`, p50/p99/min/max in milliseconds."""
    rows = [_cells(r) for r in span_summaries(timelines, stages)]
    return {"title": title, "columns": list(COLUMNS), "rows": rows, "note": note}
