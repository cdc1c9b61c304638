"""The model fit and the Table V report of bench/migration.py, from synthetic runs (pure; no QEMU).

Covers: the fit recovers the set-up time, link efficiency and downtime floor that generated the
runs; predictions for a configuration; the report's tables (measured, the paper's rows, the fit
with its error) and figures; calibrated_model() reading the fit from a result file.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sod_testbed.migration_model import calibrated_model

from bench import migration, migration_fit

LINK = 125e6  # bytes/s


def run(config: str, data: float, downtime_ms: float, rate: float | None = None) -> dict[str, Any]:
    eff, setup = 0.95, 0.05
    total = (setup + data / (eff * LINK)) * 1000  # the pause's bytes are in `data`
    return {
        "config": config,
        "workload": "idle" if rate is None else "dirty",
        "link": "netns",
        "ok": True,
        "status": "completed",
        "transferred_bytes": data,
        "total_ms": total,
        "downtime_ms": downtime_ms,
        "pause_ms": downtime_ms + 20,
        "dirty_sync_count": 3,
        "guest_rate_mib_s": rate,
    }


RUNS = [run("idle", 90e6, 40), run("idle", 92e6, 44), run("dirty30", 460e6, 290, 31.0)]
RUNS.append(run("dirty60", 680e6, 287, 61.0))


def test_the_fit_recovers_the_generating_parameters() -> None:
    params = migration_fit.fit(RUNS, LINK)
    assert params["setup_seconds"] == pytest.approx(0.05, abs=1e-6)
    assert params["link_efficiency"] == pytest.approx(0.95, rel=1e-6)
    assert params["downtime_floor_seconds"] == pytest.approx(0.042)
    assert params["idle_resident_bytes"] == pytest.approx(91e6)


def test_the_fit_needs_idle_runs() -> None:
    with pytest.raises(ValueError, match="idle"):
        migration_fit.fit([r for r in RUNS if r["workload"] != "idle"], LINK)


def test_prediction_of_an_idle_guest_is_its_resident_memory() -> None:
    params = migration_fit.fit(RUNS, LINK)
    conf = {"memory_bytes": 2**30, "wss_bytes": 0, "rate_bytes": 0.0}
    conf |= {"downtime_limit_ms": 300, "timeout_s": 60}
    p = migration_fit.predict(conf, params, LINK * 8)
    assert p["converged"]
    assert p["data_bytes"] == pytest.approx(91e6)
    assert migration_fit.rel_error(110.0, 100.0) == pytest.approx(0.1)


def test_report_tables_and_figures(tmp_path: Path) -> None:
    image = SimpleNamespace(kernel_package="linux-image-x", kernel_version="1")
    records = [{**r, "memory_bytes": 2**30} for r in RUNS]
    result = migration.report(records, quick=True, image=image)
    titles = [t["title"] for t in result.tables]
    assert titles[0].startswith("Measured here")
    assert titles[1].startswith("The paper's Table V")
    assert titles[2].startswith("The pre-copy model")
    fit_rows = {row[0]: row for row in result.tables[2]["rows"]}
    assert fit_rows["idle"][4] == "-"  # without the idle runs there is no floor to fit
    assert fit_rows["dirty60"][4].endswith(" %")  # fitted on idle, dirty30: a prediction
    idle_row = result.tables[0]["rows"][0]
    assert idle_row[0] == "idle"
    assert idle_row[3] == "2/2"
    assert {f.id for f in result.figures} >= {"idle:total_ms", "dirty60:downtime_ms"}
    path = tmp_path / "migration.json"
    path.write_text(json.dumps({"params": result.params}))
    model = calibrated_model(path)
    assert model.link_efficiency == pytest.approx(0.95, rel=1e-6)
    assert model.downtime_floor_seconds == pytest.approx(0.042)
