"""Statistics and the result format shared by every benchmark.

A benchmark produces a `Result`: a status, the method in prose, and `Figure`s. A figure holds
the raw samples of repeated runs of the project's code and, measured in the same run, of a
baseline; the summary (median, p99, spread) and the ratio are computed here, once, so every
benchmark reports them the same way. The JSON written to `bench/results/<name>.json` keeps
the raw samples so that a reader can recompute anything.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Better = Literal["lower", "higher"]
Status = Literal["ok", "not-run", "failed"]
Stat = Literal["median", "p99", "min", "max", "mean"]

SCHEMA_VERSION = 1


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    xs = sorted(samples)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """Median, p99 and spread of repeated measurements."""
    if not samples:
        raise ValueError("no samples to summarize")
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p99": percentile(samples, 99),
        "p25": percentile(samples, 25),
        "p75": percentile(samples, 75),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


@dataclass(frozen=True)
class Target:
    """A performance target of ARCHITECTURE.md, checked against one statistic of a figure."""

    stat: Stat
    op: Literal["<=", ">="]
    value: float
    source: str = "ARCHITECTURE.md, Performance targets"

    def met(self, summary: dict[str, float | int]) -> bool:
        have = float(summary[self.stat])
        return have <= self.value if self.op == "<=" else have >= self.value

    def describe(self, unit: str) -> str:
        return f"{self.stat} {self.op} {fmt(self.value)} {unit}".strip()


@dataclass
class Figure:
    """One measured quantity: the project's samples, and a baseline's from the same run."""

    id: str
    label: str
    unit: str
    better: Better
    samples: list[float]
    baseline_label: str | None = None
    baseline_samples: list[float] | None = None
    targets: list[Target] = field(default_factory=list)
    reference_label: str | None = None
    """A published figure to compare against (not measured here), e.g. the paper's 2.33 s."""
    reference_value: float | None = None
    note: str = ""

    def ratio(self, other_median: float | None) -> float | None:
        """How many times better ours is than `other_median` (> 1: ours is better)."""
        if other_median is None or not self.samples:
            return None
        ours = statistics.median(self.samples)
        if self.better == "lower":
            return other_median / ours if ours > 0 else math.inf
        return ours / other_median if other_median > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        summary = summarize(self.samples)
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "summary": summary,
            "samples": self.samples,
            "note": self.note,
        }
        if self.baseline_samples:
            base = summarize(self.baseline_samples)
            out["baseline"] = {
                "label": self.baseline_label,
                "summary": base,
                "samples": self.baseline_samples,
                "ratio": self.ratio(float(base["median"])),
            }
        if self.reference_value is not None:
            out["reference"] = {
                "label": self.reference_label,
                "value": self.reference_value,
                "ratio": self.ratio(self.reference_value),
            }
        out["targets"] = [
            {
                "stat": t.stat,
                "op": t.op,
                "value": t.value,
                "source": t.source,
                "met": t.met(summary),
                "have": summary[t.stat],
            }
            for t in self.targets
        ]
        return out


@dataclass
class Result:
    """What one benchmark reports. `not-run` and `failed` carry a reason and no figures."""

    name: str
    title: str
    status: Status = "ok"
    reason: str = ""
    method: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    """Extra tables for the report: {"title", "columns", "rows", "note"}."""
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    """Parts of the benchmark that could not run (what -> why): reported, never guessed."""

    def add_table(
        self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], note: str = ""
    ) -> None:
        self.tables.append(
            {
                "title": title,
                "columns": list(columns),
                "rows": [list(r) for r in rows],
                "note": note,
            }
        )


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table: `digits` significant digits, no scientific notation for humans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def repeat(fn: Callable[[], float], runs: int, warmup: int = 1) -> list[float]:
    """Call `fn` (which returns one measurement) `warmup` + `runs` times; keep the last `runs`."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(runs)]


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    return os.getloadavg()[0]
