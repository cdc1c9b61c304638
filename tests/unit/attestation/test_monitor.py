"""The trust-monitor step as a protocol: nonces, idempotence, labels, events, deadlines.

Scenario style (input → output, one transition per test) over recorded swtpm evidence:
the nonce is consumed by new evidence and replaced in the same write; a repeated step
writes nothing (restart safety); verdict times move only on transitions; labels follow
verdicts and never touch foreign keys; Events on every verdict change; the next deadline is
the earliest expiry. Not covered: the Kubernetes shell (tests/e2e).
"""

from __future__ import annotations

from datetime import timedelta

from sod_operator.api.constants import profile_label
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.api.v1alpha1.nodeattestation import NodeAttestation
from sod_operator.attestation import monitor
from sod_operator.attestation.monitor import EventReason

from tests.unit.attestation.conftest import ROGUE_BUNDLE, Step, run, step, verdict
from tests.unit.attestation.golden import policies


def _after(s: Step, out: monitor.StepOutput) -> NodeAttestation:
    return s.attestation().model_copy(update={"status": out.status})


def test_first_contact_issues_enrollment_challenge_and_nonce_together() -> None:
    s = step("identity")
    out = run(s.attestation(), s.now)
    assert out.status.enrollment is not None
    assert out.status.enrollment.credential_blob
    assert out.status.enrollment.encrypted_secret
    assert out.status.challenge is not None
    assert not out.new_evidence
    ready = {c.type: (c.status, c.reason) for c in out.status.conditions or []}
    assert ready["Enrolled"] == ("False", R.AWAITING_ACTIVATION)


def test_new_evidence_consumes_the_nonce_and_the_next_is_issued(good: Step) -> None:
    before = good.attestation().status
    out = run(good.attestation(), good.now)
    assert out.new_evidence
    assert out.status.evidence is not None
    assert out.status.evidence.challenge == before.challenge
    assert out.status.challenge is not None
    assert out.status.challenge != before.challenge
    assert out.status.challenge.issued_time == good.now


def test_a_repeated_step_writes_nothing(good: Step) -> None:
    labels = {profile_label("hyperwall"): "verified", profile_label("tpm"): "verified"}
    first = run(good.attestation(), good.now, labels=labels)
    again = run(_after(good, first), good.now + timedelta(seconds=5), labels=labels)
    assert not again.status_changed
    assert again.label_patch == {}
    assert again.events == ()
    assert not again.new_evidence


def test_verdict_time_moves_only_on_a_transition(good: Step) -> None:
    first = run(good.attestation(), good.now)
    later = run(_after(good, first), good.now + timedelta(seconds=5))
    a = {v.profile: v for v in first.status.verdicts}
    b = {v.profile: v for v in later.status.verdicts}
    assert a["hyperwall"].last_transition_time == b["hyperwall"].last_transition_time


def test_verified_profiles_become_labels_and_foreign_labels_stay(good: Step) -> None:
    current = {"kubernetes.io/hostname": "node-1", profile_label("datasafe"): "verified"}
    out = run(good.attestation(), good.now, labels=current)
    assert out.label_patch == {
        profile_label("datasafe"): None,
        profile_label("hyperwall"): "verified",
        profile_label("tpm"): "verified",
    }


def test_labels_of_deleted_profiles_are_removed(good: Step) -> None:
    current = {profile_label("gone"): "verified"}
    out = run(good.attestation(), good.now, labels=current)
    assert out.label_patch[profile_label("gone")] is None


def test_revocation_removes_labels_and_emits_a_warning() -> None:
    s = step("violation")
    labels = {profile_label("hyperwall"): "verified", profile_label("tpm"): "verified"}
    out = run(s.attestation(), s.now, labels=labels)
    assert out.label_patch == {profile_label("hyperwall"): None}
    revoked = [e for e in out.events if e.reason == EventReason.PROFILE_REVOKED]
    assert len(revoked) == 1
    assert "RuntimeThresholdExceeded" in revoked[0].message
    assert out.transitions == (
        monitor.Transition("hyperwall", False, R.RUNTIME_THRESHOLD_EXCEEDED),
    )


def test_enrollment_emits_node_enrolled_and_verified_events() -> None:
    s = step("enrolled")
    out = run(s.attestation(), s.now)
    reasons = [e.reason for e in out.events]
    assert EventReason.NODE_ENROLLED in reasons
    assert reasons.count(EventReason.PROFILE_VERIFIED) == 2


def test_rejected_new_evidence_emits_evidence_rejected() -> None:
    s = step("otherAk")
    out = run(s.attestation(), s.now)
    assert any(e.reason == EventReason.EVIDENCE_REJECTED for e in out.events)


def test_next_deadline_is_the_earliest_expiry(good: Step) -> None:
    out = run(good.attestation(), good.now)
    issued = out.status.evidence.challenge.issued_time  # type: ignore[union-attr]
    assert out.requeue_after == issued + timedelta(seconds=60) - good.now


def test_a_removed_profile_is_reported_as_revoked(good: Step) -> None:
    first = run(good.attestation(), good.now)
    pols = {k: v for k, v in policies().items() if k != "hyperwall"}
    out = run(_after(good, first), good.now, pols=pols)
    assert monitor.Transition("hyperwall", False, R.NO_ATTESTATION_POLICY) in out.transitions
    assert "removed" in next(e.message for e in out.events if "hyperwall" in e.message)


def test_freshness_is_per_profile(good: Step) -> None:
    pols = policies()
    short = pols["tpm"].model_copy(update={"freshness_seconds": 5})  # type: ignore[union-attr]
    pols["tpm"] = short
    first = run(good.attestation(), good.now, pols=pols)
    issued = first.status.evidence.challenge.issued_time  # type: ignore[union-attr]
    out = run(_after(good, first), issued + timedelta(seconds=10), pols=pols)
    assert verdict(out, "tpm") == ("Rejected", R.EVIDENCE_STALE)
    assert verdict(out, "hyperwall") == ("Verified", R.VERIFIED)


def test_ready_condition_follows_the_evidence(good: Step) -> None:
    out = run(good.attestation(), good.now)
    ready = {c.type: (c.status, c.reason) for c in out.status.conditions or []}
    assert ready == {"Enrolled": ("True", R.ENROLLED), "Ready": ("True", R.VERIFIED)}
    assert all(c.observed_generation == good.generation for c in out.status.conditions or [])


def test_ready_turns_false_when_no_profile_accepts_the_evidence_anymore(good: Step) -> None:
    first = run(good.attestation(), good.now)
    issued = first.status.evidence.challenge.issued_time  # type: ignore[union-attr]
    out = run(_after(good, first), issued + timedelta(seconds=60))  # longest freshness: 60 s
    ready = {c.type: (c.status, c.reason) for c in out.status.conditions or []}
    assert ready["Ready"] == ("False", R.EVIDENCE_STALE)


def test_an_unanswered_nonce_too_old_to_be_useful_is_replaced(good: Step) -> None:
    first = run(good.attestation(), good.now)
    outstanding = first.status.challenge
    assert outstanding is not None
    assert first.requeue_after is not None
    assert first.requeue_after <= timedelta(seconds=60)  # woken up to replace it at the latest
    later = run(_after(good, first), outstanding.issued_time + timedelta(seconds=59))
    assert later.status.challenge == outstanding
    replaced = run(_after(good, first), outstanding.issued_time + timedelta(seconds=60))
    assert replaced.status.challenge is not None
    assert replaced.status.challenge != outstanding
    assert not replaced.new_evidence


def test_evidence_failing_the_identity_check_still_spends_the_nonce_it_answers(
    good: Step,
) -> None:
    """An agent answers a nonce once (also after a restart, read back from its spec): if the
    verifier kept a nonce that rejected evidence answered, the agent would wait forever."""
    before = good.attestation().status
    assert before.challenge is not None
    assert good.spec["tpm"]["quote"]["nonce"] == before.challenge.nonce
    untrusted = monitor.Settings(bundle=ROGUE_BUNDLE)
    out = run(good.attestation(), good.now, settings=untrusted)
    assert not out.new_evidence
    assert out.evidence_reason != R.VERIFIED
    assert out.status.evidence == before.evidence  # not consumed: nothing was verified
    assert out.status.challenge is not None
    assert out.status.challenge.nonce != before.challenge.nonce
    assert out.status.challenge.issued_time == good.now
    again = run(_after(good, out), good.now + timedelta(seconds=5), settings=untrusted)
    assert again.status.challenge == out.status.challenge  # spent once, not on every step
