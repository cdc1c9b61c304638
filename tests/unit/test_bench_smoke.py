"""The benchmark harness runs and produces well-formed results (no timing is asserted, ever).

Runs the pure-core benchmark in --quick mode in-process; the figures themselves are
`make bench`'s business, here only their shape is checked.
"""

from __future__ import annotations

import json
import math

from bench import report, run


def test_core_benchmark_produces_well_formed_results():
    doc = run.run_one("core", quick=True)
    assert doc["status"] == "ok", doc["reason"]
    assert doc["quick"] is True
    assert doc["environment"]["cores"] >= 1
    json.dumps(doc)  # the result file is plain JSON
    assert doc["figures"]
    for fig in doc["figures"]:
        assert fig["samples"]
        assert all(math.isfinite(x) and x > 0 for x in fig["samples"])
        assert fig["summary"]["n"] == len(fig["samples"])
        assert fig["summary"]["min"] <= fig["summary"]["median"] <= fig["summary"]["max"]
        assert fig["better"] in ("lower", "higher")
        base = fig["baseline"]
        assert base["samples"]
        assert base["ratio"] > 0


def test_report_names_every_benchmark_and_says_what_did_not_run():
    docs = [run.run_one("core", quick=True)]
    docs.append(
        {
            "name": "reaction",
            "title": "Reaction latency",
            "status": "not-run",
            "reason": "the operator is not there",
            "quick": True,
            "commit": docs[0]["commit"],
            "clean": docs[0]["clean"],
        }
    )
    text = report.render(docs)
    assert "## Core throughput" in text
    assert "not-run" in text
    assert "the operator is not there" in text
