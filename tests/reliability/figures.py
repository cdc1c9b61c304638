"""The figures of docs/RELIABILITY.md, recorded by the tests that measure them.

Each reliability test calls `record(...)` once per experiment with what was tried, how often and
what came out (plus its seed). Lines are appended as JSON to `$SOD_RELIABILITY_FIGURES`
(default `build/reliability/figures.jsonl`, outside version control), so the table in the doc
is copied from an actual run, never typed in. `python -m tests.reliability.figures` prints the
latest record of each experiment as a Markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def figures_path() -> Path:
    return Path(os.environ.get("SOD_RELIABILITY_FIGURES", ROOT / "build/reliability/figures.jsonl"))


def record(item: str, experiment: str, trials: int, outcome: str, **figures: Any) -> None:
    """Append one experiment's figures (JSON-serialisable values) to the figures file."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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


def main() -> int:
    print("| item | experiment | trials | outcome | figures |")
    print("|---|---|---|---|---|")
    for row in latest():
        rest = {
            k: v for k, v in row.items() if k not in ("item", "experiment", "trials", "outcome")
        }
        print(
            f"| {row['item']} | {row['experiment']} | {row['trials']} | {row['outcome']} | "
            f"{json.dumps(rest, default=str)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
