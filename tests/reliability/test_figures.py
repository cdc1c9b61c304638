"""The figures file: rows carry their test's result and run, and one file holds one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability import figures


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh run of its own (the session's run and staged rows are left alone)."""
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv("SOD_RELIABILITY_FIGURES", str(path))
    monkeypatch.setattr(figures._Run, "id", "run-a")
    monkeypatch.setattr(figures._Run, "started", False)
    monkeypatch.setattr(figures._Run, "pending", [])
    return path


def test_rows_are_written_with_the_result_and_the_first_row_truncates(run: Path) -> None:
    run.write_text('{"stale": "row of an earlier run"}\n')
    figures.record("3", "flaps", 10, "fine", per_flap=1.0)
    assert not run.read_text().startswith('{"run"')  # staged, not written
    figures.commit("t.py::test_a", passed=True)
    figures.record("3", "other", 2, "claims success")
    figures.commit("t.py::test_b", passed=False, failure="E assert 7 <= 6")
    rows = [json.loads(line) for line in run.read_text().splitlines()]
    assert [(r["experiment"], r["result"], r["run"]) for r in rows] == [
        ("flaps", "passed", "run-a"),
        ("other", "failed", "run-a"),
    ]
    assert rows[1]["failure"] == "E assert 7 <= 6"
    text = figures.table(figures.latest())
    assert "| passed |" in text
    assert "| **failed** |" in text
    assert "(1 failed)" in text


def test_a_failed_test_without_a_row_is_a_failed_row_of_its_item(run: Path) -> None:
    figures.commit("t.py::test_c", passed=False, failure="E boom", item="2")
    figures.commit("t.py::test_d", passed=False, failure="E boom")  # no item: nothing to say
    (row,) = figures.latest()
    assert (row["item"], row["result"], row["trials"]) == ("2", "failed", 0)


def test_the_generator_refuses_a_file_that_mixes_runs(run: Path) -> None:
    figures.record("1", "x", 1, "ok")
    figures.commit("t.py::test_a", passed=True)
    figures._Run.id = "run-b"
    figures.record("1", "y", 1, "ok")
    figures.commit("t.py::test_b", passed=True)
    with pytest.raises(figures.MixedRuns, match="mixes 2 runs"):
        figures.latest()
    assert figures.main([]) == 1


def test_the_generator_refuses_rows_without_a_run(run: Path) -> None:
    run.write_text(json.dumps({"item": "1", "experiment": "x", "trials": 1, "outcome": "ok"}))
    with pytest.raises(figures.MixedRuns, match="without a run id"):
        figures.latest()
