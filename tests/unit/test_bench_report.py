"""BENCHMARKS.md is generated from result files only, from one commit (issue 15, item 5).

Renders the report from fixture result files and checks that every number in it can be
traced to a value in one of those files; that files of different commits, or without a
commit, are refused; that a dirty tree is marked loudly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import optimizations, provenance, report
from bench.stats import Figure, Result, Target, fmt

NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|\.\d)")
"""A number as a reader sees one: not a part of an identifier (p99, sha256, f3269c8)."""

COMMIT = "c0ffee" + "ab" * 17


def _doc(name: str, commit: str = COMMIT, clean: bool = True) -> dict[str, Any]:
    result = Result(name=name, title=f"Title of {name}", method="Method with 32 agents.")
    result.params = {"trials": 17, "pcrs": "sha256:0-7"}
    result.figures = [
        Figure(
            id="latency",
            label="one thing",
            unit="ms",
            better="lower",
            samples=[1.234, 2.5, 3.75, 12.125, 0.5],
            baseline_label="another thing",
            baseline_samples=[10.0, 11.5, 13.25],
            targets=[Target("median", "<=", 10.0)],
            note="CPU 6.12 ms per quote",
        ),
        Figure(
            id="rate",
            label="rate",
            unit="nodes/s",
            better="higher",
            samples=[1234.5, 2345.25],
            reference_label="a paper",
            reference_value=2.33,
        ),
    ]
    result.add_table("Verdicts", ["case", "n", "agree"], [["genuine", 102, 102]], note="n=102")
    result.not_run["part"] = "needs 64 cores"
    return {
        "schema": 1,
        "commit": commit,
        "clean": clean,
        "uncommitted": [] if clean else [" M bench/attestation.py"],
        "name": name,
        "title": result.title,
        "status": "ok",
        "reason": "",
        "quick": False,
        "started": "2026-12-06T23:40:01+00:00",
        "duration_s": 93.27,
        "load_before": 2.41,
        "load_after": 3.9,
        "quiet": False,
        "quiet_load_per_core": 0.35,
        "environment": {
            "cpu": "Some CPU @ 2.20GHz",
            "cores": 2,
            "usable_cores": 2,
            "memory_mib": 7936,
            "kernel": "6.1.0-13-amd64",
            "python": "3.11.7",
            "implementation": "CPython",
            "git": "c0ffeea",
            "packages": {"pydantic": "2.14.1"},
            "testbed": {"KUBERNETES_VERSION": "v1.35.0"},
            "swtpm": "TPM emulator version 0.10.1",
        },
        "method": result.method,
        "params": result.params,
        "figures": [f.to_json() for f in result.figures],
        "tables": result.tables,
        "notes": ["A note citing 47 quotes."],
        "not_run": result.not_run,
    }


def _traceable(value: Any, out: set[str]) -> set[str]:
    """Every spelling of every number a result file holds."""
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, int | float):
        out |= {str(value), fmt(value)}
        if isinstance(value, int):
            out.add(f"{value:,}")
    elif isinstance(value, str):
        out |= set(NUMBER.findall(value))
    elif isinstance(value, dict):
        for v in value.values():
            _traceable(v, out)
    elif isinstance(value, list):
        for v in value:
            _traceable(v, out)
    return out


def _history(tmp_path: Path) -> Path:
    """A fixture archive holding every file `optimizations` cites."""
    root = tmp_path / "history"
    cites = [f.after for f in optimizations.FIXES if f.after] + [
        f.cite for f in optimizations.OPEN if f.cite
    ]
    for cite in cites:
        doc = _doc(cite.file.removesuffix(".json"), commit="")
        doc["figures"] = [{**doc["figures"][0], "id": fid, "label": fid} for fid in cite.figures]
        path = root / cite.revision / cite.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return root


def _untraced(text: str, files: list[Any]) -> set[str]:
    allowed: set[str] = set()
    for doc in files:
        _traceable(doc, allowed)
    return set(NUMBER.findall(text)) - allowed


def test_every_number_in_the_report_is_in_a_result_file(tmp_path: Path) -> None:
    docs = [_doc("core"), _doc("attestation")]
    history = _history(tmp_path)
    archived = [json.loads(p.read_text()) for p in history.rglob("*.json")]
    text = report.render(docs, history)
    assert NUMBER.findall(text), "the fixture report should contain numbers"
    assert "not found: the citation is broken" not in text
    assert _untraced(text, docs + archived) == set()


def test_a_number_typed_into_the_report_is_caught(tmp_path: Path) -> None:
    docs = [_doc("core")]
    text = report.render(docs, _history(tmp_path)) + "\nFaster by 250,000 evals/s.\n"
    assert _untraced(text, docs) >= {"250,000"}


def test_the_report_without_history_has_no_typed_number() -> None:
    """The static text and the history section alone contribute no number."""
    docs = [_doc("core")]
    assert _untraced(report.render(docs, None), docs) == set()


def test_result_files_of_different_commits_are_refused() -> None:
    docs = [_doc("core"), _doc("attestation", commit="b" * 40)]
    with pytest.raises(report.ReportError, match="different commits"):
        report.render(docs)


def test_result_files_without_a_commit_are_refused() -> None:
    old = _doc("core")
    del old["commit"]
    with pytest.raises(report.ReportError, match="without a recorded commit"):
        report.render([old, _doc("attestation")])


def test_write_refuses_a_mixed_results_directory(tmp_path: Path) -> None:
    for doc in (_doc("core"), _doc("attestation", commit="d" * 40)):
        (tmp_path / f"{doc['name']}.json").write_text(json.dumps(doc))
    with pytest.raises(report.ReportError):
        report.write(tmp_path, tmp_path / "BENCHMARKS.md")
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_a_dirty_tree_is_marked_loudly() -> None:
    text = report.render([_doc("core", clean=False)])
    assert "DIRTY TREE" in text.split("## Summary")[0]
    assert "bench/attestation.py" in text


def test_benchmarks_without_a_result_at_this_commit_are_named() -> None:
    text = report.render([_doc("attestation")])
    assert "`--only reaction`" in text.split("## Summary")[0]


def test_every_section_says_what_was_real_and_what_was_modelled() -> None:
    docs = [_doc(name) for name in report.ORDER]
    text = report.render(docs)
    assert text.count("**Real**:") == len(report.ORDER)
    assert "not stated" not in text


def test_benchmark_outputs_do_not_make_the_tree_dirty() -> None:
    porcelain = " M bench/results/attestation.json\n M BENCHMARKS.md\n?? bench/results/x.json\n"
    assert provenance.changed_paths(porcelain) == ()
    assert provenance.changed_paths(" M bench/report.py\n") == (" M bench/report.py",)
