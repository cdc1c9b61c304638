"""bench.timeline: stage spans of reaction timelines (pure; no cluster, no clock)."""

from __future__ import annotations

import pytest

from bench import timeline
from bench.stats import Result
from bench.timeline import REQUEST_STAGES, REVOCATION_STAGES


def _tl(stages, start=1000.0, step=0.5):
    return {s: start + i * step for i, s in enumerate(stages)}


def test_stage_vocabulary_is_the_agreed_one():
    assert REVOCATION_STAGES[0] == "evidence_changed"
    assert REVOCATION_STAGES[-1] == REQUEST_STAGES[-1] == "vm_running"
    assert REQUEST_STAGES[0] == "request_raised"
    assert REVOCATION_STAGES[3:] == REQUEST_STAGES[1:]
    assert timeline.decision_stage(REVOCATION_STAGES) == "label_removed"
    assert timeline.decision_stage(REQUEST_STAGES) == "request_raised"
    with pytest.raises(ValueError, match="no decision stage"):
        timeline.decision_stage(("vmim_created",))


def test_steps_cumulative_and_paper_span():
    tls = [_tl(REQUEST_STAGES, step=0.1), _tl(REQUEST_STAGES, step=0.3)]
    rows = timeline.span_summaries(tls, REQUEST_STAGES)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("step") == len(REQUEST_STAGES) - 1
    assert kinds.count("cumulative") == len(REQUEST_STAGES) - 2
    paper = [r for r in rows if r["kind"] == "paper"]
    assert [(r["from"], r["to"]) for r in paper] == [("request_raised", "migration_started")]
    assert paper[0]["samples"] == pytest.approx([300.0, 900.0])
    total = next(r for r in rows if r["kind"] == "cumulative" and r["to"] == "vm_running")
    assert total["summary"]["median"] == pytest.approx(800.0)
    assert total["summary"]["n"] == 2


def test_a_timeline_counts_only_for_spans_whose_ends_it_observed():
    full = _tl(REVOCATION_STAGES)
    from_label = {k: v for k, v in full.items() if k not in ("evidence_changed", "verdict_written")}
    rows = {r["span"]: r for r in timeline.span_summaries([full, from_label], REVOCATION_STAGES)}
    assert rows["evidence_changed -> verdict_written"]["n"] == 1
    assert rows["label_removed -> vmim_created"]["n"] == 2
    assert rows["evidence_changed -> vm_running"]["n"] == 1
    assert rows["label_removed -> migration_started"]["n"] == 2


def test_unobserved_span_has_no_summary_and_a_dash_in_the_table():
    tls = [{"request_raised": 1.0, "vmim_created": 1.2}]
    table = timeline.timeline_table("t", tls, REQUEST_STAGES, "why")
    assert table["columns"] == list(timeline.COLUMNS)
    by_span = {row[0]: row for row in table["rows"]}
    assert by_span["request_raised -> vmim_created"][1] == 1
    assert by_span["request_raised -> vmim_created"][2] == pytest.approx(200.0)
    assert by_span["vmim_created -> target_scheduled"][1:] == [0, "-", "-", "-", "-"]
    # The shape Result.add_table makes, so the report renders it like any other table.
    res = Result(name="x", title="x")
    res.add_table(table["title"], table["columns"], table["rows"], table["note"])
    assert res.tables[0] == table
