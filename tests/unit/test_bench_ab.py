"""bench.ab_operator's pure helpers: the block plan, the operator's environment, the spans (the
timeline module's `span_ms`) and their comparison, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ab_operator import (
    block_plan,
    compare,
    format_table,
    operator_env,
    ratio,
    summary,
)
from bench.timeline import span_ms as spans


def test_blocks_alternate_and_give_each_arm_its_trials() -> None:
    plan = block_plan(12, 5)
    assert [arm for arm, _ in plan] == ["before", "after"] * 3
    assert [size for _, size in plan] == [5, 5, 5, 5, 2, 2]
    for arm in ("before", "after"):
        assert sum(size for a, size in plan if a == arm) == 12


def test_blocks_can_start_with_the_after_arm() -> None:
    assert block_plan(4, 2, first="after") == [("after", 2), ("before", 2)] * 2


def test_one_block_when_it_holds_every_trial() -> None:
    assert block_plan(3, 10) == [("before", 3), ("after", 3)]


@pytest.mark.parametrize(("trials", "block"), [(0, 5), (5, 0), (-1, 2)])
def test_block_plan_refuses_nothing_to_do(trials: int, block: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        block_plan(trials, block)


def test_operator_env_points_only_at_the_checkout() -> None:
    base = {"PYTHONPATH": "/repo/operator:/repo/testbed", "HOME": "/home/x"}
    env = operator_env(Path("/tmp/old"), base)
    assert env["PYTHONPATH"] == "/tmp/old/operator"
    assert env["HOME"] == "/home/x"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert base["PYTHONPATH"] == "/repo/operator:/repo/testbed"  # the bench's own is untouched


def test_spans_skip_timelines_missing_a_stage() -> None:
    tls = [
        {"label_removed": 10.0, "vmim_created": 10.025},
        {"label_removed": 20.0},
        {"vmim_created": 30.0},
    ]
    assert spans(tls, "label_removed", "vmim_created") == pytest.approx([25.0])


def test_summary_of_nothing_says_so() -> None:
    assert summary([]) == {"n": 0, "median": None, "p90": None}
    s = summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["n"] == 5
    assert s["median"] == 3.0
    assert s["p90"] == pytest.approx(4.6)


def test_ratio_is_after_over_before_and_none_without_a_before() -> None:
    assert ratio(30.0, 20.0) == pytest.approx(1.5)
    assert ratio(30.0, None) is None
    assert ratio(None, 20.0) is None
    assert ratio(30.0, 0.0) is None


def _trial(start: str, t0: float, ms: float) -> dict[str, float]:
    return {start: t0, "vmim_created": t0 + ms / 1000.0}


def test_compare_per_trigger_and_arm() -> None:
    timelines = {
        "before": {
            "revoked": [_trial("label_removed", 0.0, ms) for ms in (20.0, 40.0)],
            "raised": [_trial("request_raised", 0.0, ms) for ms in (100.0, 100.0)],
        },
        "after": {
            "revoked": [_trial("label_removed", 0.0, ms) for ms in (30.0, 30.0)],
            "raised": [],
        },
    }
    revoked, raised = compare(timelines)
    assert revoked["span"] == "label_removed -> vmim_created"
    assert revoked["before"]["median"] == pytest.approx(30.0)
    assert revoked["after"]["median"] == pytest.approx(30.0)
    assert revoked["ratio_median"] == pytest.approx(1.0)
    assert raised["span"] == "request_raised -> vmim_created"
    assert raised["before"]["n"] == 2
    assert raised["after"]["n"] == 0
    assert raised["ratio_median"] is None


def test_table_names_both_commits_and_shows_missing_values() -> None:
    timelines = {
        "before": {"revoked": [_trial("label_removed", 0.0, 20.0)], "raised": []},
        "after": {"revoked": [_trial("label_removed", 0.0, 10.0)], "raised": []},
    }
    text = format_table(compare(timelines), {"before": "a" * 40, "after": "b" * 40})
    lines = text.splitlines()
    assert "aaaaaaa" in lines[2]
    assert "20.0" in lines[2]
    assert "bbbbbbb" in lines[3]
    assert "10.0" in lines[3]
    assert "after/before" in lines[4]
    assert "0.50" in lines[4]
    assert lines[5].split()[-2:] == ["-", "-"]
