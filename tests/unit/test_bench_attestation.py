"""The attestation benchmark's pure helpers (issue 17 item 3): the before figures read from an
archived result file, the apiserver's request counts, the object's size by part."""

from __future__ import annotations

import json

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
    assert row[0] == "verifier_throughput_8"
    assert row[2] == "4.00"
    assert row[5] == "50.0"


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
        "status": {"challenge": {"nonce": "cd" * 32}, "evidence": {}, "verdicts": []},
    }
    shapes = attestation.write_shapes(sample)
    assert len(shapes) == 4
    full, part = next(iter(shapes.values()))
    assert full is sample
    assert part == "status"
    (small, small_part), (quote, quote_part) = list(shapes.values())[2:]
    assert small == {"spec": {}, "status": {"challenge": {"nonce": "cd" * 32}, "evidence": {}}}
    assert small_part == "status"
    assert quote_part == "spec"
    assert "eventLog" not in quote["spec"]["tpm"]["quote"]
    assert quote["spec"]["tpm"]["ekCertificate"] == "AA=="
    assert "claims" not in quote["spec"]


def test_ceiling_is_cores_over_the_cpu_of_one_quote() -> None:
    assert attestation.ceiling(2, 4.0, 6.0) == 200.0
    assert attestation.ceiling(1, 5.0, 5.0) == 100.0
