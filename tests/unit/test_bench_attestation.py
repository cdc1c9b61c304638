"""The attestation benchmark's pure helpers (issue 17 item 3): the before figures read from an
archived result file and which after figure each is compared with, the apiserver's request
counts, the verifier's evidence counter, the object's size by part, the challenges the bench
publishes in the verifier's stead."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_KEY,
    MAX_CHALLENGES,
    ChallengeList,
)

from bench import attestation
from bench.stats import Result


def _fig(fid: str, note: str, median: float, unit: str = "nodes/s") -> dict[str, object]:
    return {"id": fid, "unit": unit, "note": note, "summary": {"median": median}}


def test_before_figures_read_the_cpu_from_the_note_and_the_median_rate() -> None:
    doc = {
        "figures": [
            _fig(
                "verifier_throughput_8",
                "CPU per verified quote (medians): verifier 6.25 ms (160 nodes/s per core), "
                "kube-apiserver + etcd 13.75 ms; the whole machine was busy 100 %",
                22.5,
            ),
            _fig("verifier_cpu_per_node_8", "", 6.0, unit="ms"),
            _fig("quote_verify", "kube-apiserver + etcd 1.00 ms", 3.0, unit="ms"),
        ]
    }
    assert attestation.before_figures(doc) == {"verifier_throughput_8": (13.75, 22.5)}


def test_the_archived_before_run_has_both_agent_counts() -> None:
    doc = json.loads(attestation.BEFORE.read_text())
    got = attestation.before_figures(doc)
    assert {"verifier_throughput_8", "verifier_throughput_32"} <= set(got)
    assert doc["clean"] is True
    assert not doc["quick"]


METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
apiserver_request_total{code="200",component="apiserver",dry_run="",group="sod.dev",\
resource="nodeattestations",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 12
apiserver_request_total{code="409",component="apiserver",dry_run="",group="sod.dev",\
resource="nodeattestations",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="sod.dev",\
resource="nodeattestations",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 40
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",\
resource="events",scope="namespace",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",\
resource="pods",scope="namespace",subresource="",verb="GET",version="v1"} 9
apiserver_request_duration_seconds_count{resource="nodes",verb="PATCH"} 5
"""


def test_request_counts_sum_codes_and_skip_watches_and_other_resources() -> None:
    assert attestation.request_counts(METRICS) == {
        "PUT nodeattestations/status": 15.0,
        "POST events": 2.0,
    }


def test_object_sizes_by_part() -> None:
    obj = {
        "metadata": {"name": "n", "managedFields": [{"manager": "m"}]},
        "spec": {"tpm": {"quote": {"eventLog": "QUJD"}}},
        "status": {},
    }
    sizes = attestation.object_sizes(obj)
    assert sizes["metadata.managedFields"] == len('[{"manager":"m"}]')
    assert sizes["spec.tpm.quote.eventLog"] == 4
    assert sizes["status"] == 2
    assert sizes["object"] == len(json.dumps(obj, separators=(",", ":")))


def test_before_after_table_cites_the_archived_run() -> None:
    result = Result(name="attestation", title="Attestation")
    attestation._before_after(result, {"verifier_throughput_8": (4.0, 50.0)}, quick=True)
    (table,) = result.tables
    assert "bench/results/history/67ced2f/attestation.json" in table["note"]
    (row,) = table["rows"]
    assert row[:2] == ["verifier_throughput_8", "verifier_throughput_8"]
    assert row[3] == "4.00"
    assert row[6] == "50.0"


def test_the_whole_round_is_compared_with_the_old_drain_with_agents_answering() -> None:
    assert attestation.before_id("round_throughput_32") == "sandbox_throughput_32"
    assert attestation.before_id("verifier_throughput_8") == "verifier_throughput_8"
    result = Result(name="attestation", title="Attestation")
    attestation._before_after(result, {"round_throughput_32": (10.0, 20.0)}, quick=False)
    (row,) = result.tables[0]["rows"]
    assert row[:2] == ["round_throughput_32", "sandbox_throughput_32"]
    archived = attestation.before_figures(json.loads(attestation.BEFORE.read_text()))
    assert row[2] == f"{archived['sandbox_throughput_32'][0]:.2f}"


def test_write_shapes_keep_only_what_a_round_changes() -> None:
    sample = {
        "spec": {
            "tpm": {
                "ekCertificate": "Q0VSVA==",
                "ekPublic": "RUs=",
                "akPublic": "QUs=",
                "quote": {"nonce": "ab" * 32, "attest": "AA==", "eventLog": "TE9H"},
            },
            "claims": {"cpuFlags": ["sse"]},
        },
        "status": {"evidence": {"observedGeneration": 3}, "verdicts": []},
    }
    shapes = attestation.write_shapes(sample)
    assert len(shapes) == 4
    full, part = next(iter(shapes.values()))
    assert full is sample
    assert part == "status"
    (small, small_part), (quote, quote_part) = list(shapes.values())[2:]
    assert small == {"spec": {}, "status": {"evidence": {"observedGeneration": 3}}}
    assert small_part == "status"
    assert quote_part == "spec"
    assert "eventLog" not in quote["spec"]["tpm"]["quote"]
    assert quote["spec"]["tpm"]["ekCertificate"] == "AA=="
    assert "claims" not in quote["spec"]


def test_ceiling_is_cores_over_the_cpu_of_one_quote() -> None:
    assert attestation.ceiling(2, 4.0, 6.0) == 200.0
    assert attestation.ceiling(1, 5.0, 5.0) == 100.0


def test_the_challenges_configmap_is_the_verifiers_list_as_json() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = attestation.rotated(ChallengeList(), now, timedelta(seconds=60))
    body = attestation.challenges_configmap("cm", "ns", first)
    assert body["metadata"] == {"name": "cm", "namespace": "ns"}
    assert ChallengeList.model_validate_json(body["data"][CHALLENGES_KEY]) == first
    again = attestation.challenges_configmap("cm", "ns", first, resource_version="42")
    assert again["metadata"]["resourceVersion"] == "42"


def test_rotated_issues_a_nonce_every_call_and_drops_what_is_too_old() -> None:
    keep = timedelta(seconds=60)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    current = ChallengeList()
    for i in range(20):
        current = attestation.rotated(current, now + timedelta(seconds=10 * i), keep)
    newest = current.challenges[0]
    assert newest.issued_time == now + timedelta(seconds=190)
    margin = timedelta(seconds=attestation.ROUND_SECONDS)  # as the verifier keeps them
    assert all(newest.issued_time - c.issued_time <= keep + margin for c in current.challenges)
    assert len(current.challenges) == 8 <= MAX_CHALLENGES
    same_instant = attestation.rotated(current, newest.issued_time, keep)
    assert same_instant.challenges[0].nonce != newest.nonce


def test_keep_for_is_the_longest_freshness_bound_of_a_profile_with_a_policy() -> None:
    profiles: list[dict[str, Any]] = [
        {"spec": {"attestation": {"architecture": "a", "freshnessSeconds": 60}}},
        {"spec": {"attestation": {"architecture": "b", "freshnessSeconds": 300}}},
        {"spec": {}},
    ]
    assert attestation.keep_for(profiles, 120) == timedelta(seconds=300)
    assert attestation.keep_for([{"spec": {}}], 120) == timedelta(seconds=120)


VERIFIER_METRICS = """\
# HELP sod_attestation_evidence_total New evidence processed, by evidence-level result.
# TYPE sod_attestation_evidence_total counter
sod_attestation_evidence_total{reason="Verified"} 40.0
sod_attestation_evidence_total{reason="NonceMismatch"} 2.0
sod_attestation_evidence_created{reason="Verified"} 1.7e+09
sod_attestation_evidence_oldest_age_seconds{profile="tpm"} 3.0
"""


def test_evidence_counts_by_reason_and_the_delta_of_a_round() -> None:
    counts = attestation.evidence_counts(VERIFIER_METRICS)
    assert counts == {"Verified": 40.0, "NonceMismatch": 2.0}
    later = {"Verified": 48.0, "NonceMismatch": 2.0}
    assert attestation.evidence_delta(counts, later) == {"Verified": 8.0}
    assert attestation.evidence_delta({}, {"QuoteReplayed": 1.0}) == {"QuoteReplayed": 1.0}


def test_a_round_with_a_rejected_answer_stops_the_run() -> None:
    with pytest.raises(RuntimeError, match="NonceMismatch"):
        attestation._counted({"Verified": 8.0}, {"Verified": 15.0, "NonceMismatch": 1.0})
    attestation._counted({"Verified": 8.0}, {"Verified": 16.0})


def test_request_counts_include_the_challenges_configmap() -> None:
    line = (
        'apiserver_request_total{code="200",component="apiserver",group="",'
        'resource="configmaps",scope="resource",subresource="",verb="PUT",version="v1"} 3\n'
    )
    assert attestation.request_counts(line) == {"PUT configmaps": 3.0}


def test_usage_adds_and_subtracts_field_by_field() -> None:
    a = attestation.Usage(1.0, 2.0, 3.0, 4.0, 5.0)
    b = attestation.Usage(0.5, 0.5, 0.5, 0.5, 0.5)
    assert (a - b) + b == a


def test_drain_means_are_total_cpu_over_total_quotes() -> None:
    drain = attestation.Drain()
    drain.add(8, 0.1, attestation.Usage(0.008, 0.016, 0.008, 1.0, 2.0), polls=10)
    drain.add(8, 0.2, attestation.Usage(0.008, 0.048, 0.008, 1.0, 2.0), polls=20)
    assert drain.rates == [80.0, 40.0]
    assert drain.quotes == 16
    assert drain.polls == 30
    verifier, server = drain.mean_ms()
    assert verifier == pytest.approx(1.0)
    assert server == pytest.approx(5.0)
