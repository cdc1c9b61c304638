"""The pure parts of `sodctl sandbox demo` (no cluster): when a running sandbox can be reused,
how the story reads SecureVM, NodeAttestation and VMIM objects, the operator's reaction metric,
and how the timeline prints. The story itself runs in tests/e2e/test_demo.py.
"""

from __future__ import annotations

import argparse
import io

import pytest
from sod_operator.api.constants import profile_label
from sod_testbed import demo
from sod_testbed.nodes import PLAIN, NodeSpec, parse_nodes

NODES = parse_nodes(demo.DEFAULT_NODES)


def test_the_default_nodes_tell_the_story() -> None:
    archs = [n.architecture for n in NODES]
    assert archs.count("hyperwall") == 2  # VM-B needs somewhere to go
    assert {"tpm-measured-boot", "datasafe", "plain"} <= set(archs)


def test_a_sandbox_with_the_same_nodes_is_reused() -> None:
    assert demo.sandbox_mismatch(list(reversed(NODES)), NODES) is None


def test_a_sandbox_with_other_nodes_names_the_difference() -> None:
    running = parse_nodes("hyperwall=2,datasafe=1,plain=1")
    assert demo.sandbox_mismatch(running, NODES) == "lacks tpm-measured-boot-1"
    assert demo.sandbox_mismatch(NODES, running) == "also has tpm-measured-boot-1"
    relabelled = [NodeSpec(n.name, PLAIN) if n.name == "hyperwall-1" else n for n in NODES]
    assert demo.sandbox_mismatch(relabelled, NODES) == "hyperwall-1 is plain, not hyperwall"


def _svm(compliant: str, node: str | None = "hyperwall-1") -> dict[str, object]:
    return {
        "metadata": {"name": "vm-b"},
        "spec": {"security": {"options": ["Basic", "HypervisorProtection"]}},
        "status": {
            "nodeName": node,
            "request": {
                "matrix": [
                    {"entity": "OtherVMs", "properties": ["Confidentiality", "Integrity"]},
                    {"entity": "Hypervisor", "properties": ["Confidentiality", "Integrity"]},
                ],
                "scope": "FullVM",
            },
            "conditions": [{"type": "Compliant", "status": compliant, "reason": "x"}],
        },
    }


def test_compliant_on_needs_the_condition_and_a_node() -> None:
    assert demo.compliant_on(_svm("True")) == "hyperwall-1"
    assert demo.compliant_on(_svm("False")) is None
    assert demo.compliant_on(_svm("True", node=None)) is None
    assert demo.compliant_on(None) is None


def test_describe_request_shows_options_properties_and_scope() -> None:
    assert demo.describe_request(_svm("True")) == "Basic+HypervisorProtection; C+I; FullVM"
    package = _svm("True")
    package["spec"] = {"security": {"package": "medical-records"}}
    assert demo.describe_request(package).startswith("package medical-records; C+I")


def test_verified_profiles_come_from_the_verifier_labels_only() -> None:
    node = {
        "metadata": {
            "labels": {
                profile_label("hyperwall"): "verified",
                "sod.dev/simulated-architecture": "hyperwall",
            }
        }
    }
    assert demo.verified_profiles(node) == ["hyperwall"]
    assert demo.verified_profiles({"metadata": {}}) == []


def test_verdict_by_profile() -> None:
    att = {"status": {"verdicts": [{"profile": "hyperwall", "result": "Rejected"}]}}
    assert (demo.verdict(att, "hyperwall") or {})["result"] == "Rejected"
    assert demo.verdict(att, "tpm") is None


def test_phase_span_uses_kubevirts_transition_timestamps() -> None:
    vmim = {
        "status": {
            "phaseTransitionTimestamps": [
                {"phase": "Pending", "phaseTransitionTimestamp": "2026-12-01T10:15:29Z"},
                {"phase": "Running", "phaseTransitionTimestamp": "2026-12-01T10:15:30Z"},
                {"phase": "Succeeded", "phaseTransitionTimestamp": "2026-12-01T10:15:37Z"},
            ]
        }
    }
    assert demo.phase_span(vmim, "Pending", "Succeeded") == 8.0
    assert demo.phase_span(vmim, "Pending", "Failed") is None


def test_reaction_metric_reads_the_histogram_of_one_trigger() -> None:
    text = "\n".join(
        [
            "# TYPE sod_reaction_seconds histogram",
            'sod_reaction_seconds_bucket{le="0.1",trigger="TrustRevoked"} 1.0',
            'sod_reaction_seconds_sum{trigger="TrustRevoked"} 0.062',
            'sod_reaction_seconds_count{trigger="TrustRevoked"} 1.0',
            'sod_reaction_seconds_sum{trigger="RequestRaised"} 9.0',
        ]
    )
    assert demo.reaction_metric(text) == (0.062, 1.0)
    assert demo.reaction_metric("# no observation yet") == (0.0, 0.0)
    assert demo.reaction_metric(None) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0483, "48 ms"), (2.33, "2.33 s"), (12.34, "12.3 s"), (65.0, "1 min 05 s")],
)
def test_seconds_for_people(value: float, text: str) -> None:
    assert demo.seconds(value) == text


def test_timeline_prints_offsets_and_wraps_under_the_text() -> None:
    out = io.StringIO()
    tl = demo.Timeline(out, t0=100.0, width=40)
    tl.at(112.34, "vm-b is Compliant again on hyperwall-2 (hyperwall)")
    tl.more("short note")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[  +12.3s] vm-b is Compliant")
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].startswith(" " * 13)
    assert lines[-1] == " " * 11 + "short note"


def test_options_scale_every_timeout() -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    options = demo.options_from(parser.parse_args(["--timeout-factor", "2"]))
    assert options.timeouts.migration_done == 2 * demo.Timeouts().migration_done
    assert options.nodes == demo.DEFAULT_NODES
    with pytest.raises(ValueError, match="--timeout-factor must be positive"):
        demo.options_from(parser.parse_args(["--timeout-factor", "0"]))
