"""`python -m bench.run [--only NAME ...] [--quick]`: run the benchmarks, write the results, report.

Every selected benchmark writes `bench/results/<name>.json`; BENCHMARKS.md is then regenerated
from all result files present, so `--only` refreshes one benchmark and keeps the others.
A benchmark whose dependency is missing is recorded as "not-run" with the reason; one that
raises is recorded as "failed" with the error. Neither produces a number.

Every result file records the commit and whether the tree was clean; a run refuses to start
on a tree with uncommitted changes (outside the outputs) unless `--allow-dirty`, and then
every result and the report say so loudly. The report refuses result files of different
commits (bench/report.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import environment, provenance, report
from bench.stats import SCHEMA_VERSION, Result, load_average

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# In the order `make bench` runs them (cheapest first, so a broken sandbox fails late).
BENCHMARKS: dict[str, str] = {
    "core": "bench.core_throughput",
    "attestation": "bench.attestation",
    "reaction": "bench.reaction",
    "fanout": "bench.fanout",
    "scale": "bench.scale",
}
# Run only when named with --only (make bench-migration): real QEMU migrations take minutes.
OPTIONAL: dict[str, str] = {"migration": "bench.migration"}


def _load(name: str) -> ModuleType:
    return importlib.import_module({**BENCHMARKS, **OPTIONAL}[name])


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run one benchmark and return its result document (never raises for a benchmark's fault)."""
    origin = provenance.current()
    env = environment.describe()
    load_before = load_average()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    title = name
    try:
        module = _load(name)
        title = module.TITLE
        missing = module.missing()
        if missing:
            result = Result(name=name, title=title, status="not-run", reason=missing)
        else:
            result = module.run(quick=quick)
    except Exception as err:
        tb = traceback.format_exc(limit=-8)
        print(tb, file=sys.stderr)
        result = Result(
            name=name, title=title, status="failed", reason=f"{type(err).__name__}: {err}"
        )
        result.notes.append("Traceback (last frames):\n\n```\n" + tb.strip() + "\n```")
    duration = time.perf_counter() - t0
    load_after = load_average()
    cores = int(env["usable_cores"])
    return {
        "schema": SCHEMA_VERSION,
        "commit": origin.commit,
        "clean": origin.clean,
        "uncommitted": list(origin.changes),
        "name": name,
        "title": result.title,
        "status": result.status,
        "reason": result.reason,
        "quick": quick,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 2),
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "quiet": environment.is_quiet(load_before, load_after, cores),
        "quiet_load_per_core": environment.QUIET_LOAD_PER_CORE,
        "environment": env,
        "method": result.method,
        "params": result.params,
        "figures": [f.to_json() for f in result.figures],
        "tables": result.tables,
        "notes": result.notes,
        "not_run": result.not_run,
    }


def write_result(doc: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{doc['name']}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted({**BENCHMARKS, **OPTIONAL}),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer trials and smaller fleets (for a busy machine or a smoke test)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="regenerate BENCHMARKS.md from bench/results"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="write the results but leave BENCHMARKS.md"
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run on a tree with uncommitted changes (results and report are marked DIRTY)",
    )
    args = parser.parse_args(argv)
    origin = provenance.current()
    if not args.report_only and not origin.clean and not args.allow_dirty:
        print(
            "[bench] refusing to run: figures must come from one committed tree "
            f"(commit {origin.commit or 'none'}); uncommitted changes:\n  "
            + "\n  ".join(origin.changes)
            + "\ncommit them, or pass --allow-dirty (results are then marked DIRTY)",
            file=sys.stderr,
        )
        return 2
    if not args.report_only:
        names = args.only or list(BENCHMARKS)
        t0 = time.perf_counter()
        for name in names:
            print(f"[bench] {name}: running{' (quick)' if args.quick else ''}", flush=True)
            doc = run_one(name, quick=args.quick)
            path = write_result(doc)
            status = doc["status"] + (f" ({doc['reason']})" if doc["reason"] else "")
            print(f"[bench] {name}: {status} in {doc['duration_s']:.1f} s -> {path}", flush=True)
        print(f"[bench] total {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_report:
        try:
            out = report.write(RESULTS_DIR)
        except report.ReportError as err:
            print(f"[bench] BENCHMARKS.md not written: {err}", file=sys.stderr)
            return 3
        print(f"[bench] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
