"""The node-agent's pure decisions and fact collection (no TPM, no apiserver).

Covers: when the agent answers a nonce (once per nonce, paced, at once on a claims change,
at once for an enrollment challenge, resumed from its own spec after a restart), CPU flags
and kvm module parameters from fake /proc and /sys trees, and the simulated-architecture
state file. Not covered: TPM calls (tests/node_agent) and publishing (tests/e2e).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sod_node_agent import facts
from sod_node_agent.schedule import AgentState, blob_id, plan
from sod_operator.api.v1alpha1.base import Condition, ConditionStatus
from sod_operator.api.v1alpha1.nodeattestation import (
    ArchitectureSource,
    Challenge,
    Enrollment,
    EnrollmentState,
    NodeAttestationStatus,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
N1, N2 = "11" * 32, "22" * 32


def _status(
    nonce: str | None = N1, challenged: bool = False, ready: bool = True
) -> NodeAttestationStatus:
    enrollment = None
    if challenged:
        enrollment = Enrollment(
            state=EnrollmentState.CHALLENGED,
            ek_certificate_sha256="a" * 64,
            ak_name="000b" + "b" * 64,
            credential_blob="QUJD",
            encrypted_secret="REVG",
            credential_sha256="c" * 64,
            challenged_time=NOW,
        )
    challenge = Challenge(nonce=nonce, issued_time=NOW) if nonce else None
    condition = Condition(
        type="Ready",
        status=ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        reason="Verified" if ready else "EvidenceStale",
        last_transition_time=NOW,
    )
    return NodeAttestationStatus(challenge=challenge, enrollment=enrollment, conditions=[condition])


def test_missing_object_is_created() -> None:
    p = plan(False, False, NodeAttestationStatus(), AgentState(), "c", 0, 10)
    assert p.identity
    assert p.quote_nonce is None


def test_first_answer_is_immediate() -> None:
    p = plan(True, True, _status(), AgentState(), "c", 0, 10)
    assert p.quote_nonce == N1


def test_an_answered_nonce_is_never_answered_again() -> None:
    state = AgentState().answered(N1, "c", 0)
    p = plan(True, True, _status(N1), state, "other-claims", 100, 10)
    assert not p.publish


def test_without_a_new_nonce_nothing_is_due_even_with_interval_zero() -> None:
    state = AgentState().answered(N1, "c", 0)
    p = plan(True, True, _status(N1), state, "c", 100, 0)
    assert not p.publish
    assert p.wait_seconds == math.inf  # the agent waits for the watch or its claims poll


def test_a_new_nonce_waits_for_the_interval() -> None:
    state = AgentState().answered(N1, "c", 0)
    p = plan(True, True, _status(N2), state, "c", 4, 10)
    assert not p.publish
    assert p.wait_seconds == pytest.approx(6)
    assert plan(True, True, _status(N2), state, "c", 10, 10).quote_nonce == N2


def test_a_node_that_is_not_ready_recovers_without_waiting_the_interval() -> None:
    state = AgentState().answered(N1, "c", 0)
    assert not plan(True, True, _status(N2, ready=False), state, "c", 0.5, 10).publish
    p = plan(True, True, _status(N2, ready=False), state, "c", 1.0, 10)
    assert p.quote_nonce == N2
    assert p.why == "recovering"


def test_a_claims_change_is_reported_at_once() -> None:
    state = AgentState().answered(N1, "c", 0)
    p = plan(True, True, _status(N2), state, "violation", 1, 10)
    assert p.quote_nonce == N2
    assert p.why == "claims changed"


def test_an_enrollment_challenge_is_answered_with_a_quote() -> None:
    p = plan(True, True, _status(N1, challenged=True), AgentState(), "c", 0, 10)
    assert p.activate
    assert p.quote_nonce == N1


def test_a_challenge_is_answered_once() -> None:
    state = AgentState(answered_challenge=blob_id("QUJD")).answered(N1, "c", 0)
    assert not plan(True, True, _status(N1, challenged=True), state, "c", 1, 10).publish


def test_lost_tpm_evidence_is_rewritten() -> None:
    state = AgentState().answered(N1, "c", 0)
    p = plan(True, False, _status(N1), state, "c", 1, 10)
    assert p.identity
    assert p.quote_nonce is None


def test_resume_after_restart_from_the_published_spec() -> None:
    from sod_operator.api.v1alpha1.nodeattestation import NodeAttestationSpec

    spec = NodeAttestationSpec.model_validate(
        {"tpm": {"ekCertificate": "", "ekPublic": "", "akPublic": "",
                 "quote": {"nonce": N1, "attest": "", "signature": "", "pcrBank": "SHA256",
                           "pcrs": []}}}
    )  # fmt: skip
    state = AgentState.from_spec(spec)
    assert state.answered_nonce == N1
    assert not plan(True, True, _status(N1), state, "x", 6, 10).publish
    assert plan(True, True, _status(N2), state, "x", 6, 10).quote_nonce == N2  # no pacing


def test_cpu_flags_and_module_parameters(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: sse2 sev_snp avx sse2\n\nprocessor\t: 1\n")
    params = tmp_path / "module" / "kvm_amd" / "parameters"
    params.mkdir(parents=True)
    (params / "sev_snp").write_text("Y\n")
    assert facts.cpu_flags(cpuinfo) == ["avx", "sev_snp", "sse2"]
    [p] = facts.module_parameters(tmp_path / "module")
    assert (p.name, p.value) == ("kvm_amd.sev_snp", "Y")


def test_simulated_state_drives_the_claims(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    facts.SimulatedState("hyperwall", {"memoryViolations": 2}, ("sev_snp",)).write(path)
    claims = facts.collect(
        facts.FactSources(cpuinfo=tmp_path / "none", sys_module=tmp_path / "none", simulated=path)
    )
    assert claims.architecture == "hyperwall"
    assert claims.architecture_source == ArchitectureSource.SIMULATED
    assert [(c.name, c.value) for c in claims.counters] == [("memoryViolations", 2)]
    assert claims.cpu_flags == ["sev_snp"]


def test_configured_architecture_and_missing_state_file(tmp_path: Path) -> None:
    claims = facts.collect(
        facts.FactSources(cpuinfo=tmp_path / "none", sys_module=tmp_path / "none",
                          simulated=tmp_path / "absent.json", architecture="tdx")
    )  # fmt: skip
    assert (claims.architecture, claims.architecture_source) == ("tdx", "Configured")


def test_broken_state_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON simulated-architecture state"):
        facts.SimulatedState.load(path)
