"""BENCHMARKS.md, generated from `bench/results/*.json` (never edited by hand).

The report states, per benchmark, whether it ran, in which mode (quick or full), how loaded
the machine was, the method, and per figure the median, p99 and spread of the samples with
the baseline measured in the same run and the ratio between them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import optimizations
from bench.stats import fmt

REPO_ROOT = Path(__file__).resolve().parents[1]
REPORT = REPO_ROOT / "BENCHMARKS.md"
ORDER = ("core", "attestation", "reaction", "fanout", "scale", "migration")

GENERAL_METHOD = """\
Every figure is measured by `make bench` (`python -m bench.run`, add `--only NAME` for one
benchmark and `--quick` for the reduced variant) and written to `bench/results/<name>.json`
with its raw samples; this file is regenerated from those files. No unit test asserts a time.

* **Repeated runs.** A figure is a set of samples (one per trial or per pass over the
  workload). The tables give the **median**, the **p99** (linear interpolation between closest
  ranks; with fewer than 100 samples it lies between the two largest), the interquartile range
  **p25-p75** and **min-max**, and **n**, the number of samples.
* **Baselines are measured in the same run**, on the same machine, right next to the
  project's code, with the same inputs; both implementations' answers are compared before
  anything is timed. **Ratio** = how many times better the project's median is than the
  baseline's median (baseline / ours for times, ours / baseline for rates): above 1 the
  project is better. Published figures (the paper's 2.33 s) are reference lines, not
  baselines.
* **Targets** are those of `ARCHITECTURE.md` ("Performance targets"), checked against the
  statistic they name.
* **Machine load.** The 1-minute load average is sampled before and after each benchmark. A
  section says "quiet" only when the load before it started shows no other work on the
  machine (at most 0.35 per core); the load after includes the benchmark's own sandbox. The
  machine is shared with other work while the project is developed, so a "busy" section's
  figures are pessimistic.
* A benchmark whose dependency is missing is reported as **not run**, with the reason, and
  has no figures.
"""


def _load(results_dir: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(docs, key=lambda d: (rank.get(d.get("name", ""), 99), d.get("name", "")))


def _table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    cols = list(columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return fmt(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _ratio(value: float | None, better: str) -> str:
    if value is None:
        return "-"
    word = "faster" if better == "lower" else "higher"
    return f"**{fmt(value)}x** {word}" if value >= 1 else f"**{fmt(value)}x** (worse)"


def _targets(fig: dict[str, Any]) -> str:
    parts = []
    for t in fig.get("targets", []):
        mark = "met" if t["met"] else "**NOT met**"
        parts.append(f"{t['stat']} {t['op']} {fmt(t['value'])} {fig['unit']}: {mark}")
    return "; ".join(parts) or "-"


def _mode(doc: dict[str, Any]) -> str:
    mode = "quick" if doc.get("quick") else "full"
    cores = doc.get("environment", {}).get("usable_cores", "?")
    load = (
        f"1-min load {doc.get('load_before')} at start, {doc.get('load_after')} at the end "
        f"(with the benchmark's own sandbox) on {cores} cores"
    )
    quiet = "quiet machine at start" if doc.get("quiet") else "machine busy with other work"
    return f"{mode} run, {doc.get('started')}, {fmt(doc.get('duration_s'))} s, {quiet} ({load})"


def _summary(docs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for doc in docs:
        if doc.get("status") != "ok":
            rows.append(
                [doc.get("title", doc["name"]), f"**{doc['status']}**: {doc.get('reason', '')}"]
                + ["-"] * 5
            )
            continue
        for what, why in doc.get("not_run", {}).items():
            rows.append([doc.get("title", doc["name"]), what, f"**not run**: {why}"] + ["-"] * 4)
        for fig in doc.get("figures", []):
            s = fig["summary"]
            base = fig.get("baseline")
            rows.append(
                [
                    doc.get("title", doc["name"]),
                    fig["label"],
                    f"{fmt(s['median'])} / {fmt(s['p99'])} {fig['unit']}",
                    f"{fmt(base['summary']['median'])} {fig['unit']}" if base else "-",
                    _ratio(base["ratio"], fig["better"]) if base else "-",
                    _targets(fig),
                    "quick" if doc.get("quick") else "full",
                ]
            )
    return _table(
        [
            "benchmark",
            "figure",
            "ours: median / p99",
            "baseline: median",
            "ratio vs baseline",
            "target",
            "mode",
        ],
        rows,
    )


def _environment(docs: list[dict[str, Any]]) -> list[str]:
    envs = [d["environment"] for d in docs if d.get("environment")]
    if not envs:
        return ["(no results yet)"]
    env = envs[-1]
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    testbed = ", ".join(
        f"{k.removesuffix('_VERSION').lower()} {v}" for k, v in env["testbed"].items()
    )
    rows = [
        ["CPU", env.get("cpu")],
        ["cores (usable)", f"{env.get('cores')} ({env.get('usable_cores')})"],
        ["memory", f"{fmt(env.get('memory_mib'))} MiB"],
        ["kernel", env.get("kernel")],
        ["Python", f"{env.get('implementation')} {env.get('python')}"],
        ["packages", packages],
        ["test bed", testbed or "-"],
        ["swtpm", env.get("swtpm") or "-"],
        ["git", env.get("git") or "-"],
    ]
    revisions = sorted({str(e.get("git")) for e in envs})
    out = _table(["", ""], rows)
    if len(revisions) > 1:
        out += ["", "Results come from several revisions: " + ", ".join(revisions) + "."]
    return out


def _figures(doc: dict[str, Any]) -> list[str]:
    rows = []
    for fig in doc.get("figures", []):
        s = fig["summary"]
        rows.append(
            [
                fig["label"],
                fig["unit"],
                s["n"],
                s["median"],
                s["p99"],
                f"{fmt(s['p25'])}-{fmt(s['p75'])}",
                f"{fmt(s['min'])}-{fmt(s['max'])}",
                "ours",
                "",
                _targets(fig),
            ]
        )
        base = fig.get("baseline")
        if base:
            b = base["summary"]
            rows.append(
                [
                    "",
                    fig["unit"],
                    b["n"],
                    b["median"],
                    b["p99"],
                    f"{fmt(b['p25'])}-{fmt(b['p75'])}",
                    f"{fmt(b['min'])}-{fmt(b['max'])}",
                    f"baseline: {base['label']}",
                    _ratio(base["ratio"], fig["better"]),
                    "",
                ]
            )
        ref = fig.get("reference")
        if ref:
            rows.append(
                [
                    "",
                    fig["unit"],
                    "",
                    ref["value"],
                    "",
                    "",
                    "",
                    f"reference: {ref['label']}",
                    f"{100 * ref['ratio']:.0f} % of the ideal"
                    if "lower bound" in str(ref["label"]) and ref["ratio"] is not None
                    else _ratio(ref["ratio"], fig["better"]),
                    "",
                ]
            )
    out = _table(
        ["figure", "unit", "n", "median", "p99", "p25-p75", "min-max", "what", "ratio", "target"],
        rows,
    )
    notes = [f"* {fig['label']}: {fig['note']}" for fig in doc.get("figures", []) if fig["note"]]
    if notes:
        out += ["", *notes]
    return out


def _section(doc: dict[str, Any]) -> list[str]:
    out = [f"## {doc.get('title', doc['name'])} (`--only {doc['name']}`)", ""]
    if doc.get("status") != "ok":
        out += [f"**{doc['status'].upper()}**: {doc.get('reason', '')}", ""]
        out += [f"_{_mode(doc)}_", ""]
        for note in doc.get("notes", []):
            out += [note, ""]
        return out
    out += [f"_{_mode(doc)}_", ""]
    if doc.get("method"):
        out += [doc["method"].strip(), ""]
    if doc.get("params"):
        out += [
            "Parameters: " + ", ".join(f"`{k}={v}`" for k, v in doc["params"].items()) + ".",
            "",
        ]
    out += [*_figures(doc), ""]
    for what, why in doc.get("not_run", {}).items():
        out += [f"* **Not run**: {what}: {why}"]
    if doc.get("not_run"):
        out += [""]
    for table in doc.get("tables", []):
        out += [f"**{table['title']}**", "", *_table(table["columns"], table["rows"]), ""]
        if table.get("note"):
            out += [table["note"], ""]
    for note in doc.get("notes", []):
        out += [note, ""]
    return out


def _duration_line(docs: list[dict[str, Any]]) -> str:
    total = sum(float(d.get("duration_s") or 0) for d in docs)
    starts = sorted(str(d.get("started")) for d in docs if d.get("started"))
    quick = any(d.get("quick") for d in docs)
    span = f"started {starts[0]} to {starts[-1]}" if starts else "no run recorded"
    return (
        f"The benchmarks above took {total / 60:.1f} min together "
        f"({'quick' if quick else 'full'} runs, {span}), without the set-up of `make bench`."
    )


def render(docs: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench.run` (make bench) from bench/results/*.json. -->",
        "<!-- Do not edit by hand: change bench/ and re-run. -->",
        "",
        "Issue 7: reaction latency, incident fan-out, scale, core throughput and attestation,",
        "each against a baseline measured in the same run. Regenerate with `make bench`",
        "(everything, < 30 min on 2 cores) or `.venv/bin/python -m bench.run --only NAME`.",
        "",
        "## Summary",
        "",
        *_summary(docs),
        "",
        _duration_line(docs),
        "",
        "## Method",
        "",
        GENERAL_METHOD,
        "## Environment",
        "",
        *_environment(docs),
        "",
    ]
    for doc in docs:
        lines += _section(doc)
    lines += optimizations.render()
    return "\n".join(lines).rstrip() + "\n"


def write(results_dir: Path, path: Path = REPORT) -> Path:
    path.write_text(render(_load(results_dir)))
    return path
