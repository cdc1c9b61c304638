"""The trust-monitor step as a protocol: nonces, idempotence, labels, events, deadlines.

Scenario style (input → output, one transition per test) over recorded swtpm evidence:
a quote must answer a published nonce and carry a TPM clock no earlier than the recorded one;
the status is written only when it changes in substance (a round saying nothing new yields a
renewal for the fleet's ConfigMap, the status is renewed only when those do not keep up); a
repeated step writes nothing (restart safety); verdict times move only on transitions; labels
follow verdicts and never touch foreign keys; Events on every verdict change; the next deadline
is the earliest expiry or renewal. Not covered: the Kubernetes shell (tests/e2e).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sod_operator.api.constants import profile_label
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.api.v1alpha1.nodeattestation import (
    ChallengeList,
    NodeAttestation,
    ProfileVerdict,
    renewed_expiry,
)
from sod_operator.attestation import monitor
from sod_operator.attestation.monitor import EventReason

from tests.unit.attestation.conftest import PUBLISHED, Step, run, step, verdict
from tests.unit.attestation.golden import policies


def _after(s: Step, out: monitor.StepOutput) -> NodeAttestation:
    return s.attestation().model_copy(update={"status": out.status})


def _answered(s: Step) -> ChallengeList:
    """Only the nonce `s`'s quote answers is published."""
    found = PUBLISHED.find(s.spec["tpm"]["quote"]["nonce"])
    assert found is not None
    return ChallengeList(challenges=[found])


def test_first_contact_issues_enrollment_challenge_and_nonce_together() -> None:
    s = step("identity")
    out = run(s.attestation(), s.now)
    assert out.status.enrollment is not None
    assert out.status.enrollment.credential_blob
    assert out.status.enrollment.encrypted_secret
    assert out.status_changed
    assert not out.new_evidence
    ready = {c.type: (c.status, c.reason) for c in out.status.conditions or []}
    assert ready["Enrolled"] == ("False", R.AWAITING_ACTIVATION)


def test_evidence_is_recorded_with_the_nonce_it_answers_and_its_tpm_clock(good: Step) -> None:
    out = run(good.attestation(), good.now, challenges=_answered(good))
    assert out.new_evidence
    assert out.status_changed
    record = out.status.evidence
    assert record is not None
    assert record.challenge == _answered(good).newest == out.answered
    assert record.tpm_clock is not None
    assert record.tpm_clock.clock > 0
    assert record.content_sha256 is not None


def test_a_quote_answering_a_nonce_not_published_is_refused(good: Step) -> None:
    other = step("good2")
    out = run(good.attestation(), good.now, challenges=_answered(other))
    assert out.evidence_reason == R.NONCE_MISMATCH
    assert out.answered is None
    assert out.status_changed  # a rejection is always recorded, with why
    assert any(e.reason == EventReason.EVIDENCE_REJECTED for e in out.events)


def _quiet_round(good: Step) -> tuple[Step, dict[str, object], ProfileVerdict]:
    """A written first round, the next round's step (a new quote, the same claims and PCRs),
    and the written hyperwall verdict."""
    first = run(good.attestation(), good.now)
    after_first = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    [hw] = [v for v in first.status.verdicts if v.profile == "hyperwall"]
    assert hw.expiry_time is not None
    assert hw.evidence_time is not None
    return step("good2"), after_first, hw


def _spent(v: ProfileVerdict, share: float) -> datetime:
    assert v.expiry_time is not None
    assert v.evidence_time is not None
    return v.evidence_time + (v.expiry_time - v.evidence_time) * share


def test_a_round_that_says_nothing_new_is_not_written_but_renews(good: Step) -> None:
    later, after_first, hw = _quiet_round(good)
    quiet = run(later.attestation(status=after_first), later.now)
    assert quiet.new_evidence
    assert quiet.evidence_reason == R.VERIFIED
    assert not quiet.status_changed
    assert quiet.renewal is not None
    assert hw.evidence_time is not None
    assert quiet.renewal.evidence_time > hw.evidence_time
    assert quiet.status.evidence is not None
    assert quiet.renewal.content_sha256 == quiet.status.evidence.content_sha256
    assert not quiet.renewal_due  # not yet half spent


def test_a_renewal_is_due_once_half_the_lifetime_is_spent(good: Step) -> None:
    later, after_first, hw = _quiet_round(good)
    half = run(later.attestation(status=after_first), _spent(hw, 0.5))
    assert not half.status_changed  # the fleet's renewals carry it, not a status write
    assert half.renewal_due
    published = run(later.attestation(status=after_first), _spent(hw, 0.5), renewal=half.renewal)
    assert not published.renewal_due  # once published, nothing more to do


def test_the_status_is_renewed_when_published_renewals_do_not_keep_up(good: Step) -> None:
    later, after_first, hw = _quiet_round(good)
    late = run(later.attestation(status=after_first), _spent(hw, 0.75))
    assert late.status_changed
    [again] = [v for v in late.status.verdicts if v.profile == "hyperwall"]
    assert again.expiry_time is not None
    assert hw.expiry_time is not None
    assert again.expiry_time > hw.expiry_time
    renewal = run(later.attestation(status=after_first), later.now).renewal
    kept_up = run(later.attestation(status=after_first), _spent(hw, 0.75), renewal=renewal)
    assert not kept_up.status_changed


def test_a_renewal_applies_only_to_the_content_it_names(good: Step) -> None:
    later, after_first, hw = _quiet_round(good)
    renewal = run(later.attestation(status=after_first), later.now).renewal
    assert renewal is not None
    assert hw.expiry_time is not None
    assert hw.evidence_time is not None
    moved = renewed_expiry(hw.expiry_time, hw.evidence_time, renewal.content_sha256, renewal)
    assert moved - hw.expiry_time == renewal.evidence_time - hw.evidence_time
    other = renewed_expiry(hw.expiry_time, hw.evidence_time, "0" * 64, renewal)
    assert other == hw.expiry_time
    earlier = renewal.model_copy(update={"evidence_time": hw.evidence_time})
    assert renewed_expiry(hw.expiry_time, hw.evidence_time, renewal.content_sha256, earlier) == (
        hw.expiry_time
    )


def test_a_changed_freshness_bound_is_written_so_renewals_use_the_new_lifetime(
    good: Step,
) -> None:
    """A renewal moves a written expiry by the written lifetime: a profile whose
    freshnessSeconds was shortened must not be renewed on the old one (fail open)."""
    later, after_first, _ = _quiet_round(good)
    pols = policies()
    hw = pols["hyperwall"]
    assert hw is not None
    shorter = {**pols, "hyperwall": hw.model_copy(update={"freshness_seconds": 30})}
    out = run(later.attestation(status=after_first), later.now, pols=shorter)
    assert out.status_changed
    [v] = [v for v in out.status.verdicts if v.profile == "hyperwall"]
    assert v.expiry_time is not None
    assert v.evidence_time is not None
    assert v.expiry_time - v.evidence_time == timedelta(seconds=30)


def test_rejected_evidence_gives_no_renewal(good: Step) -> None:
    first = run(good.attestation(), good.now)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    other_ak = step("otherAk")
    out = run(other_ak.attestation(status=status), other_ak.now)
    assert out.evidence_reason != R.VERIFIED
    assert out.renewal is None


def test_written_evidence_renews_nothing_beyond_its_own_verdicts() -> None:
    good2, violation = step("good2"), step("violation")
    first = run(good2.attestation(), good2.now)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    out = run(violation.attestation(status=status), violation.now)
    assert out.status_changed
    assert out.renewal is not None
    verified = [v for v in out.status.verdicts if v.result == "Verified"]
    assert verified
    assert {v.evidence_time for v in verified} == {out.renewal.evidence_time}


def test_evidence_that_says_something_new_is_written() -> None:
    good2, violation = step("good2"), step("violation")
    first = run(good2.attestation(), good2.now)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    out = run(violation.attestation(status=status), violation.now)
    assert out.status_changed
    assert verdict(out, "hyperwall")[0] == "Rejected"


def test_an_older_quote_sent_again_is_refused_by_its_tpm_clock() -> None:
    """Nonces are shared and listed for a while, so answering one does not spend it: the
    TPM clock is what keeps a node from undoing its newer evidence with an older quote."""
    good, violation = step("good"), step("violation")
    bad = run(violation.attestation(), violation.now)
    assert verdict(bad, "hyperwall")[0] == "Rejected"
    status = bad.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    replay = good.attestation(status=status).model_copy(update={"generation": 99})
    out = run(replay, violation.now)
    assert out.evidence_reason == R.QUOTE_REPLAYED
    assert verdict(out, "hyperwall") == ("Rejected", R.QUOTE_REPLAYED)
    assert not out.label_patch


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
    assert out.answered is not None
    expiry = out.answered.issued_time + timedelta(seconds=60)
    renewals = [
        v.expiry_time - (v.expiry_time - v.evidence_time) / 4
        for v in out.status.verdicts
        if v.result == "Verified" and v.expiry_time and v.evidence_time
    ]
    soonest = min(d for d in [expiry, *renewals] if d > good.now)
    assert out.requeue_after == soonest - good.now


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


def test_the_recorded_quote_sent_again_is_not_new_evidence_but_its_generation_is_written(
    good: Step,
) -> None:
    """A re-sent quote (e.g. with a new `agent.producedTime`) gains nothing, yet the status
    says the verifier saw that generation, as for every spec change that is not a round."""
    first = run(good.attestation(), good.now)
    resent = _after(good, first).model_copy(update={"generation": good.generation + 1})
    out = run(resent, good.now)
    assert not out.new_evidence
    assert out.status_changed
    assert out.status.observed_generation == good.generation + 1
    assert out.status.evidence == first.status.evidence


def test_rejected_evidence_in_between_does_not_lift_the_replay_floor(good: Step) -> None:
    """Newer evidence, then a forged quote (rejected, recorded), then the older good quote:
    still refused, however often it is judged again."""
    violation = step("violation")
    bad = run(violation.attestation(), violation.now)
    floor = bad.status.evidence.tpm_clock  # type: ignore[union-attr]
    assert floor is not None
    forged = violation.mutable_spec()
    forged["tpm"]["quote"]["signature"] = good.spec["tpm"]["quote"]["signature"]
    status = bad.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    rejected = run(
        violation.attestation(spec=forged, status=status).model_copy(update={"generation": 98}),
        violation.now,
    )
    assert rejected.evidence_reason == R.QUOTE_SIGNATURE_INVALID
    assert rejected.status.evidence.tpm_clock == floor  # type: ignore[union-attr]
    status = rejected.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    replay = good.attestation(status=status).model_copy(update={"generation": 99})
    first = run(replay, violation.now)
    assert first.evidence_reason == R.QUOTE_REPLAYED
    again = run(_after(good, first).model_copy(update={"generation": 99}), violation.now)
    assert again.evidence_reason == R.QUOTE_REPLAYED
    assert verdict(again, "hyperwall") == ("Rejected", R.QUOTE_REPLAYED)
