"""The figures of docs/RELIABILITY.md, recorded by the tests that measure them.

Each reliability test calls `record(...)` once per experiment with what was tried, how often and
what came out (plus its seed). Lines are appended as JSON to `$SOD_RELIABILITY_FIGURES`
(default `build/reliability/figures.jsonl`, outside version control), so the table in the doc
is copied from an actual run, never typed in. `python -m tests.reliability.figures` prints the
latest record of each experiment as a Markdown table; `--write docs/RELIABILITY.md` puts it
between the doc's markers.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def figures_path() -> Path:
    return Path(os.environ.get("SOD_RELIABILITY_FIGURES", ROOT / "build/reliability/figures.jsonl"))


@functools.cache
def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "unknown"


def record(item: str, experiment: str, trials: int, outcome: str, **figures: Any) -> None:
    """Append one experiment's figures (JSON-serialisable values) to the figures file."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "item": item,
        "experiment": experiment,
        "trials": trials,
        "outcome": outcome,
        **figures,
    }
    with path.open("a") as f:
        f.write(json.dumps(line, sort_keys=False, default=str) + "\n")
    print(f"[reliability] {item} {experiment}: {trials} trials, {outcome} {figures}")


def latest() -> list[dict[str, Any]]:
    path = figures_path()
    if not path.exists():
        return []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for text in path.read_text().splitlines():
        row = json.loads(text)
        rows[(row["item"], row["experiment"])] = row
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
_PLAIN = ("time", "commit", "item", "experiment", "trials", "outcome")


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
        "| # | what was tried | trials | outcome | figures |",
        "|---|---|---:|---|---|",
    ]
    for row in rows:
        item = str(row["item"])
        lines.append(
            f"| {item} {ITEMS.get(item, '')} | {row['experiment']} | {row['trials']} | "
            f"{str(row['outcome']).replace('|', '/')} | {_figures(row)} |"
        )
    first = min((r["time"] for r in rows), default="-")
    last = max((r["time"] for r in rows), default="-")
    total = sum(int(r["trials"]) for r in rows)
    commits = sorted({str(r.get("commit", "unknown")) for r in rows})
    lines.append("")
    lines.append(
        f"{len(rows)} experiments, {total} trials, recorded from {first} to {last} at commit "
        f"{', '.join(commits)} by `make test`."
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
    if args[:1] == ["--write"] and len(args) == 2:
        write(Path(args[1]))
        return 0
    if args:
        print("usage: python -m tests.reliability.figures [--write docs/RELIABILITY.md]")
        return 2
    print(table(latest()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
