"""sod_testbed.descheduler: the policy it runs with, its command line, reading its JSON log
(pure; the process itself runs in bench/baseline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sod_testbed import descheduler
from sod_testbed.binaries import MissingBinaries

CYCLE_END = descheduler.CYCLE_END


def test_policy_runs_only_required_node_affinity_in_the_given_namespaces():
    doc = descheduler.policy(["a", "b"])
    assert doc["apiVersion"] == "descheduler/v1alpha2"
    (profile,) = doc["profiles"]
    assert profile["plugins"] == {"deschedule": {"enabled": ["RemovePodsViolatingNodeAffinity"]}}
    args = {c["name"]: c.get("args") for c in profile["pluginConfig"]}
    assert args["RemovePodsViolatingNodeAffinity"] == {
        "nodeAffinityType": ["requiredDuringSchedulingIgnoredDuringExecution"],
        "namespaces": {"include": ["a", "b"]},
    }
    # The Helm chart's evictor: launcher pods have emptyDirs and must stay evictable.
    assert "PodsWithLocalStorage" in args["DefaultEvictor"]["podProtections"]["defaultDisabled"]


def test_argv_loops_at_the_interval_with_json_logs():
    cmd = descheduler.argv(Path("/d"), Path("/k"), Path("/p.yaml"), 60)
    assert cmd[0] == "/d"
    assert "--descheduling-interval=60s" in cmd
    assert "--logging-format=json" in cmd
    assert "--v=3" in cmd
    assert "--policy-config-file=/p.yaml" in cmd
    assert "--feature-gates=EvictionsInBackground=true" in cmd


def _line(ts_ms: float, msg: str, **kv: object) -> str:
    return json.dumps({"ts": ts_ms, "v": 1, "msg": msg, **kv})


def test_parse_log_reads_cycles_and_evictions():
    t0 = 1_796_000_000.0  # epoch seconds; the log stamps milliseconds
    text = "\n".join(
        [
            "not json",
            _line(t0 * 1000, "Resetting pod evictor counters"),
            _line(
                t0 * 1000 + 50, "Evicting pod", pod={"name": "virt-launcher-x", "namespace": "n"}
            ),
            _line(
                t0 * 1000 + 100, "Number of evictions/requests", totalEvicted=1, evictionRequests=0
            ),
            _line(t0 * 1000 + 60_000, "Resetting pod evictor counters"),
        ]
    )
    log = descheduler.parse_log(text)
    assert [c.start for c in log.cycles] == [t0, t0 + 60]
    assert log.cycles[0].end == pytest.approx(t0 + 0.1, abs=1e-3)
    assert (log.cycles[0].evicted, log.cycles[0].requests) == (1, 0)
    assert log.cycles[1].end is None
    assert log.evictions == [(pytest.approx(t0 + 0.05, abs=1e-3), "n/virt-launcher-x")]


def test_missing_binary_names_the_build_command(tmp_path):
    with pytest.raises(MissingBinaries, match=r"build-testbed\.sh descheduler"):
        descheduler.descheduler_binary(tmp_path)
