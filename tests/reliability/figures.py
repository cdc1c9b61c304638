"""The figures of docs/RELIABILITY.md, recorded by the tests that measure them.

Each reliability test calls `record(...)` once per experiment with what was tried, how often and
what came out (plus its seed). `record` only stages the row: the pytest hook of
`tests.reliability.plugin` commits it once the test's report is known, with the test's result
(`passed`, or `failed` and the first line of the failure), so a row never claims an outcome its
test's later assertions refuted. A reliability test that fails before it recorded anything
still gets a `failed` row (its item is the module's `RELIABILITY_ITEM` or the test's
`@reliability(item)`).

Rows go as JSON lines to `$SOD_RELIABILITY_FIGURES` (default
`build/reliability/figures.jsonl`, outside version control). One file holds one run: the first
row a pytest session commits truncates the file, and every row carries the session's run id;
the generator refuses a file whose rows come from more than one run. `python -m
tests.reliability.figures` prints the table; `--write docs/RELIABILITY.md` puts it between the
doc's markers.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
F = TypeVar("F", bound=Callable[..., Any])


def figures_path() -> Path:
    return Path(os.environ.get("SOD_RELIABILITY_FIGURES", ROOT / "build/reliability/figures.jsonl"))


@functools.cache
def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "unknown"


class _Run:
    """This process's run: its id, whether it has started its figures file, its staged rows."""

    id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    started = False
    pending: list[dict[str, Any]] = []


def reliability(item: str) -> Callable[[F], F]:
    """Marks a test outside the reliability modules as one whose failure is a row of `item`."""

    def mark(fn: F) -> F:
        fn.reliability_item = item  # type: ignore[attr-defined]
        return fn

    return mark


def record(item: str, experiment: str, trials: int, outcome: str, **figures: Any) -> None:
    """Stage one experiment's figures (JSON-serialisable values); committed with the test's
    result by the pytest hook."""
    row = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "item": item,
        "experiment": experiment,
        "trials": trials,
        "outcome": outcome,
        **figures,
    }
    _Run.pending.append(row)
    print(f"[reliability] {item} {experiment}: {trials} trials, {outcome} {figures}")


def pending() -> bool:
    return bool(_Run.pending)


def commit(test: str, passed: bool, failure: str = "", item: str | None = None) -> None:
    """Write the staged rows with the test's result; a failed test with none staged and a known
    item gets a row saying so."""
    rows, _Run.pending = _Run.pending, []
    if not rows and not passed and item:
        rows = [{
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": _commit(),
            "item": item, "experiment": f"`{test}`", "trials": 0,
            "outcome": "failed before it recorded its figures",
        }]  # fmt: skip
    if not rows:
        return
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "a" if _Run.started else "w"  # the run's first row truncates the file
    _Run.started = True
    with path.open(mode) as f:
        for row in rows:
            row = {"run": _Run.id, "test": test, "result": "passed" if passed else "failed",
                   **row, **({"failure": failure} if not passed else {})}  # fmt: skip
            f.write(json.dumps(row, sort_keys=False, default=str) + "\n")


class MixedRuns(ValueError):
    pass


def latest(path: Path | None = None) -> list[dict[str, Any]]:
    """The rows of the figures file, the last of each experiment; refuses a file that holds more
    than one run or rows without a run id or result."""
    path = path or figures_path()
    if not path.exists():
        return []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    runs: set[str] = set()
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        row = json.loads(text)
        if not row.get("run") or row.get("result") not in ("passed", "failed"):
            raise MixedRuns(f"{path}:{n}: a row without a run id or result (an older format)")
        runs.add(row["run"])
        rows[(row["item"], row["experiment"])] = row
    if len(runs) > 1:
        raise MixedRuns(f"{path} mixes {len(runs)} runs: {sorted(runs)}; one file per run")
    return sorted(rows.values(), key=lambda r: (r["item"], r["experiment"]))


ITEMS = {
    "1": "Operator crash",
    "2": "Control-plane faults",
    "3": "Migration faults",
    "4": "Bad input",
    "5": "Authorization",
    "6": "Attestation attacks",
    "7": "Tenant attacks on VM ownership and placement",
    "8": "Verifier fail-over",
}
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
_PLAIN = ("run", "test", "result", "time", "commit", "item", "experiment", "trials", "outcome")


def _numbers(rows: list[Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in rows:
        if isinstance(row, dict):
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out.setdefault(k, []).append(float(v))
    return out


def _figures(row: dict[str, Any]) -> str:
    """The measured values of one record, condensed: scalars as they are, lists of records
    as min-max per numeric field, short lists joined."""
    parts: list[str] = []
    for key, value in row.items():
        if key in _PLAIN:
            continue
        if isinstance(value, bool) or value is None:
            parts.append(f"{key}: {value}")
        elif isinstance(value, int | float | str):
            text = str(value)
            parts.append(f"{key}: {text if len(text) <= 80 else text[:77] + '...'}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            ranges = [
                f"{k} {min(v):g} to {max(v):g}" if min(v) != max(v) else f"{k} {min(v):g}"
                for k, v in _numbers(value).items()
                if k not in ("trial", "evacuation", "kill")
            ]
            parts.append(f"{key} ({len(value)}): " + ", ".join(ranges))
        elif isinstance(value, list):
            parts.append(f"{key}: {len(value)} listed" if len(value) > 6 else f"{key}: {value}")
        elif isinstance(value, dict):
            text = str(value)
            parts.append(f"{key}: {len(value)} entries" if len(text) > 120 else f"{key}: {text}")
    return "; ".join(parts).replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| # | what was tried | trials | result | outcome | figures |",
        "|---|---|---:|---|---|---|",
    ]
    for row in rows:
        item = str(row["item"])
        result = "**failed**" if row["result"] == "failed" else "passed"
        lines.append(
            f"| {item} {ITEMS.get(item, '')} | {row['experiment']} | {row['trials']} | {result} | "
            f"{str(row['outcome']).replace('|', '/')} | {_figures(row)} |"
        )
    first = min((r["time"] for r in rows), default="-")
    last = max((r["time"] for r in rows), default="-")
    total = sum(int(r["trials"]) for r in rows)
    failed = sum(1 for r in rows if r["result"] == "failed")
    commits = sorted({str(r.get("commit", "unknown")) for r in rows})
    runs = sorted({str(r["run"]) for r in rows}) or ["-"]
    lines.append("")
    lines.append(
        f"{len(rows)} experiments ({failed} failed), {total} trials, recorded from {first} to "
        f"{last} at commit {', '.join(commits)} in one test run ({runs[0]})."
    )
    return "\n".join(lines)


def write(doc: Path) -> None:
    """Replace the doc's generated table (between the markers) with the latest records."""
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table(latest())}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write", *args[1:2]]) or len(args) == 1:
        print("usage: python -m tests.reliability.figures [--write docs/RELIABILITY.md]")
        return 2
    try:
        if args:
            write(Path(args[1]))
        else:
            print(table(latest()))
    except MixedRuns as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
