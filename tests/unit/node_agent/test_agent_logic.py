"""The node-agent's pure decisions and fact collection (no TPM, no apiserver).

Covers: when the agent answers the newest published nonce (once per nonce, paced, at once
when not Ready, at once on a claims change even over an answered nonce, nothing without a
published nonce, at once for an enrollment challenge, resumed from its own spec after a
restart), CPU flags and kvm module parameters from fake /proc and /sys trees, and the
simulated-architecture state file. Not covered: TPM calls (tests/node_agent) and publishing
(test_publish_order.py, tests/e2e).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sod_node_agent import facts
from sod_node_agent.schedule import AgentState, Plan, blob_id, plan
from sod_operator.api.v1alpha1.base import Condition, ConditionStatus
from sod_operator.api.v1alpha1.nodeattestation import (
    ArchitectureSource,
    Enrollment,
    EnrollmentState,
    NodeAttestationSpec,
    NodeAttestationStatus,
    claims_digest,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
N1, N2 = "11" * 32, "22" * 32


def _status(challenged: bool = False, ready: bool = True) -> NodeAttestationStatus:
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
    condition = Condition(
        type="Ready",
        status=ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        reason="Verified" if ready else "EvidenceStale",
        last_transition_time=NOW,
    )
    return NodeAttestationStatus(enrollment=enrollment, conditions=[condition])


def _plan(
    newest: str | None,
    state: AgentState,
    claims: str = "c",
    now: float = 0,
    interval: float = 10,
    status: NodeAttestationStatus | None = None,
) -> Plan:
    """The plan of an agent whose object exists with its TPM identity."""
    return plan(True, True, status or _status(), newest, state, claims, now, interval)


ANSWERED_N1 = AgentState().answered(N1, "c", 0)


def test_missing_object_is_created() -> None:
    p = plan(False, False, NodeAttestationStatus(), N1, AgentState(), "c", 0, 10)
    assert p.identity
    assert p.quote_nonce is None


def test_first_answer_is_immediate() -> None:
    p = _plan(N1, AgentState())
    assert (p.quote_nonce, p.why) == (N1, "first answer")


def test_without_a_published_nonce_nothing_is_quoted() -> None:
    """No ConfigMap yet (or a broken one): nothing to answer, even when the claims change;
    only a change (the watches) or the claims poll starts the next round."""
    for state in (AgentState(), ANSWERED_N1):
        p = _plan(None, state, claims="violation", interval=0)
        assert not p.publish
        assert p.wait_seconds == math.inf


def test_an_answered_nonce_is_not_answered_again_with_the_same_claims() -> None:
    p = _plan(N1, ANSWERED_N1, now=100, interval=0)
    assert not p.publish
    assert p.wait_seconds == math.inf  # the agent waits for the watch or its claims poll


def test_a_claims_change_re_answers_the_same_nonce_at_once() -> None:
    p = _plan(N1, ANSWERED_N1, claims="violation", now=1)
    assert (p.quote_nonce, p.why) == (N1, "claims changed")
    after = ANSWERED_N1.answered(N1, "violation", 1)
    assert not _plan(N1, after, claims="violation", now=2).publish


def test_a_claims_change_does_not_wait_for_the_pacing_of_a_new_nonce() -> None:
    p = _plan(N2, ANSWERED_N1, claims="violation", now=1)
    assert (p.quote_nonce, p.why) == (N2, "claims changed")


def test_a_new_nonce_waits_for_the_interval() -> None:
    p = _plan(N2, ANSWERED_N1, now=4)
    assert not p.publish
    assert p.wait_seconds == pytest.approx(6)
    assert _plan(N2, ANSWERED_N1, now=10).quote_nonce == N2


def test_a_node_that_is_not_ready_answers_a_new_nonce_at_once() -> None:
    p = _plan(N2, ANSWERED_N1, now=0.1, status=_status(ready=False))
    assert (p.quote_nonce, p.why) == (N2, "recovering")
    # ... but once per nonce: no busy loop while the evidence stays rejected.
    again = ANSWERED_N1.answered(N2, "c", 0.1)
    assert not _plan(N2, again, now=0.2, status=_status(ready=False)).publish


def test_an_enrollment_challenge_is_answered_with_a_quote() -> None:
    p = _plan(N1, AgentState(), status=_status(challenged=True))
    assert p.activate
    assert p.quote_nonce == N1


def test_an_enrollment_challenge_is_answered_without_a_nonce() -> None:
    p = _plan(None, AgentState(), status=_status(challenged=True))
    assert p.activate
    assert p.quote_nonce is None


def test_an_enrollment_challenge_keeps_an_answered_nonces_quote() -> None:
    p = _plan(N1, ANSWERED_N1, now=1, status=_status(challenged=True))
    assert (p.activate, p.quote_nonce) == (True, None)


def test_a_challenge_is_answered_once() -> None:
    state = ANSWERED_N1.activated("QUJD")
    assert state.answered_challenge == blob_id("QUJD")
    assert not _plan(N1, state, now=1, status=_status(challenged=True)).publish


def test_lost_tpm_evidence_is_rewritten_with_a_quote() -> None:
    p = plan(True, False, _status(), N1, ANSWERED_N1, "c", 1, 10)
    assert p.identity
    assert p.quote_nonce == N1  # the quote went with it
    assert plan(True, False, _status(), None, ANSWERED_N1, "c", 1, 10).quote_nonce is None


def _spec(nonce: str) -> NodeAttestationSpec:
    return NodeAttestationSpec.model_validate(
        {"tpm": {"ekCertificate": "", "ekPublic": "", "akPublic": "",
                 "quote": {"nonce": nonce, "attest": "", "signature": "", "pcrBank": "SHA256",
                           "pcrs": []}}}
    )  # fmt: skip


def test_resume_after_restart_from_the_published_spec() -> None:
    spec = _spec(N1)
    state = AgentState.from_spec(spec)
    same_claims = claims_digest(spec.claims).hex()
    assert state.answered_nonce == N1
    assert not _plan(N1, state, claims=same_claims, now=6).publish
    p = _plan(N2, state, claims=same_claims, now=6)
    assert (p.quote_nonce, p.why) == (N2, "first answer")  # no pacing after a restart


def test_resume_after_restart_re_answers_when_the_claims_changed_meanwhile() -> None:
    p = _plan(N1, AgentState.from_spec(_spec(N1)), claims="violation", now=6)
    assert (p.quote_nonce, p.why) == (N1, "claims changed")


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
