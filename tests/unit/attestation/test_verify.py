"""Verification of recorded swtpm evidence: every check, every attack, every reason.

Covers: the recorded life of a node (enrollment → verified → memory violation → unexpected
PCR measurement → another AK) replayed through the pure verifier, and tampering with the
real blobs — forged signature, flipped attest bits, replayed nonce, re-labelled nonce,
altered claims, tampered PCR values, missing PCRs, untrusted or swapped EKs, bad AK
attributes, wrong activation answers, stale evidence, malformed input.
Not covered here: the TPM side (tests/node_agent) and the apiserver (tests/e2e).
"""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.api.v1alpha1.nodeattestation import (
    ChallengeList,
    NodeAttestationSpec,
    NodeAttestationStatus,
)
from sod_operator.attestation import monitor
from sod_operator.attestation.verify import verify

from tests.unit.attestation.conftest import (
    BUNDLE,
    ENROLLMENTS,
    GOLDEN,
    PUBLISHED,
    ROGUE_BUNDLE,
    Step,
    run,
    step,
    verdict,
)
from tests.unit.attestation.golden import GOLDEN_PCRS, policies


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------- the recorded life


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("identity", {"hyperwall": R.AWAITING_ACTIVATION, "tpm": R.AWAITING_ACTIVATION}),
        ("enrolled", {"hyperwall": R.VERIFIED, "tpm": R.VERIFIED}),
        ("good", {"hyperwall": R.VERIFIED, "datasafe": R.ARCHITECTURE_MISMATCH, "tpm": R.VERIFIED}),
        ("violation", {"hyperwall": R.RUNTIME_THRESHOLD_EXCEEDED, "tpm": R.VERIFIED}),
        ("pcrExtended", {"hyperwall": R.PCR_VALUE_MISMATCH, "tpm": R.PCR_VALUE_MISMATCH}),
        ("otherAk", {"hyperwall": R.AK_NOT_ENROLLED, "tpm": R.AK_NOT_ENROLLED}),
    ],
)
def test_recorded_steps_replay_with_their_reasons(name: str, expected: dict[str, R]) -> None:
    s = step(name)
    out = run(s.attestation(), s.now)
    for profile, reason in expected.items():
        assert verdict(out, profile)[1] == reason, (profile, out.status.verdicts)
    assert verdict(out, "no-policy") == ("Rejected", R.NO_ATTESTATION_POLICY)


def test_the_tpm_activated_the_credential_this_verifier_made() -> None:
    """The recorded activation answer hashes to the challenge's credential digest: the real
    TPM decrypted the software MakeCredential blob (KDFa, AES-CFB, HMAC, OAEP all right)."""
    import hashlib

    s = step("enrolled")
    answer = base64.b64decode(s.spec["tpm"]["activation"]["credential"])
    assert hashlib.sha256(answer).hexdigest() == s.status_before["enrollment"]["credentialSha256"]
    assert s.status_after["enrollment"]["state"] == "Enrolled"


def test_reported_pcrs_are_the_golden_ones_after_the_simulated_boot(good: Step) -> None:
    pcrs = {p["index"]: p["value"] for p in good.spec["tpm"]["quote"]["pcrs"]}
    assert {i: pcrs[i] for i in GOLDEN_PCRS} == GOLDEN_PCRS
    assert GOLDEN["goldenPcrs"] == {str(k): v for k, v in GOLDEN_PCRS.items()}


def test_verify_reports_every_profile_sorted(good: Step) -> None:
    att = good.attestation()
    challenge = PUBLISHED.find(good.spec["tpm"]["quote"]["nonce"])
    result = verify(
        att.spec,
        att.status.enrollment,
        challenge,
        policies(),
        BUNDLE,
        good.now,
        enrollments=ENROLLMENTS,
    )
    assert [d.profile for d in result.decisions] == sorted(policies())
    assert result.verified_profiles == ["hyperwall", "tpm"]


# --------------------------------------------------------------------------- attacks


def test_forged_signature_is_rejected(good: Step) -> None:
    spec = good.mutable_spec()
    spec["tpm"]["quote"]["signature"] = _flip(spec["tpm"]["quote"]["signature"], 40)
    out = run(good.attestation(spec), good.now)
    assert out.evidence_reason == R.QUOTE_SIGNATURE_INVALID
    assert out.status.verified_profiles == []


def test_flipped_bit_in_the_signed_quote_is_rejected(good: Step) -> None:
    spec = good.mutable_spec()
    spec["tpm"]["quote"]["attest"] = _flip(spec["tpm"]["quote"]["attest"], 60)
    assert run(good.attestation(spec), good.now).evidence_reason == R.QUOTE_SIGNATURE_INVALID


def test_a_different_ak_is_rejected_even_with_a_valid_signature() -> None:
    s = step("otherAk")
    out = run(s.attestation(), s.now)
    assert out.evidence_reason == R.AK_NOT_ENROLLED
    assert "not the enrolled AK" in verdict_message(out, "tpm")


def test_replayed_evidence_answers_an_old_nonce() -> None:
    old, later = step("enrolled"), step("good2")
    current = PUBLISHED.find(later.spec["tpm"]["quote"]["nonce"])
    assert current is not None
    published = ChallengeList(challenges=[current])  # the old nonce is no longer listed
    out = run(later.attestation(spec=old.spec), later.now, challenges=published)
    assert out.evidence_reason == R.NONCE_MISMATCH
    assert out.new_evidence
    assert "no longer lists" in verdict_message(out, "hyperwall")


def test_rewriting_the_latest_quote_gains_nothing() -> None:
    """The already-consumed quote written again is not new evidence: its age still counts
    from its own nonce, so a replay cannot extend trust (and consumes no nonce)."""
    last, later = step("good"), step("good2")
    out = run(later.attestation(spec=last.spec), later.now)
    assert not out.new_evidence
    record = out.status.evidence
    assert record is not None
    assert record.challenge is not None
    assert record.challenge.nonce == last.spec["tpm"]["quote"]["nonce"]
    stale = run(
        later.attestation(spec=last.spec), record.challenge.issued_time + timedelta(seconds=60)
    )
    assert verdict(stale, "hyperwall") == ("Rejected", R.EVIDENCE_STALE)


def test_old_quote_relabelled_with_the_current_nonce_breaks_the_binding() -> None:
    old, later = step("good"), step("good2")
    spec = old.mutable_spec()
    spec["tpm"]["quote"]["nonce"] = later.status_before["challenge"]["nonce"]
    assert run(later.attestation(spec), later.now).evidence_reason == R.QUALIFYING_DATA_MISMATCH


def test_claims_altered_after_the_quote_break_the_binding() -> None:
    s = step("violation")
    spec = s.mutable_spec()
    for counter in spec["claims"]["counters"]:
        counter["value"] = 0  # hide the memory violation
    out = run(s.attestation(spec), s.now)
    assert out.evidence_reason == R.QUALIFYING_DATA_MISMATCH
    assert verdict(out, "hyperwall") == ("Rejected", R.QUALIFYING_DATA_MISMATCH)


def test_tampered_pcr_value_breaks_the_pcr_digest() -> None:
    s = step("pcrExtended")
    spec = s.mutable_spec()
    for pcr in spec["tpm"]["quote"]["pcrs"]:
        if pcr["index"] == 4:
            pcr["value"] = GOLDEN_PCRS[4]  # claim the golden value the TPM did not quote
    out = run(s.attestation(spec), s.now)
    assert out.evidence_reason == R.PCR_DIGEST_MISMATCH


def test_unexpected_measurement_names_the_pcr() -> None:
    s = step("pcrExtended")
    out = run(s.attestation(), s.now)
    assert out.evidence_reason == R.VERIFIED  # the quote is genuine ...
    result, reason = verdict(out, "hyperwall")  # ... but shows an unexpected measurement
    assert (result, reason) == ("Rejected", R.PCR_VALUE_MISMATCH)
    assert "PCR 4" in verdict_message(out, "hyperwall")


def test_memory_violation_above_the_threshold() -> None:
    s = step("violation")
    out = run(s.attestation(), s.now)
    assert verdict(out, "hyperwall") == ("Rejected", R.RUNTIME_THRESHOLD_EXCEEDED)
    assert "memoryViolations=3 exceeds the maximum 0" in verdict_message(out, "hyperwall")
    assert verdict(out, "tpm") == ("Verified", R.VERIFIED)


def test_dropping_a_reported_pcr_is_a_selection_mismatch(good: Step) -> None:
    spec = good.mutable_spec()
    spec["tpm"]["quote"]["pcrs"] = spec["tpm"]["quote"]["pcrs"][:-1]
    assert run(good.attestation(spec), good.now).evidence_reason == R.PCR_SELECTION_MISMATCH


def test_a_required_pcr_outside_the_quote(good: Step) -> None:
    pols = {
        "p16": AttestationPolicy.model_validate(
            {"tpm": {"pcrs": [{"index": 16, "values": ["00" * 32]}]}}
        )
    }
    out = run(good.attestation(), good.now, pols)
    assert verdict(out, "p16") == ("Rejected", R.PCR_NOT_QUOTED)


def test_a_policy_on_another_bank(good: Step) -> None:
    pols = {
        "p": AttestationPolicy.model_validate(
            {"tpm": {"pcrBank": "SHA384", "pcrs": [{"index": 0, "values": ["00" * 48]}]}}
        )
    }
    assert verdict(run(good.attestation(), good.now, pols), "p") == (
        "Rejected",
        R.PCR_BANK_MISMATCH,
    )


def test_untrusted_ek_certificate_gets_no_challenge() -> None:
    att = step("identity").attestation(spec=GOLDEN["rogueSpec"], status={})
    out = run(att, step("identity").now)
    assert out.evidence_reason == R.EK_CERTIFICATE_UNTRUSTED
    assert out.status.enrollment is None
    assert "no certificate in the CA bundle issued" in verdict_message(out, "tpm")


def test_the_same_tpm_is_trusted_with_its_ca_in_the_bundle() -> None:
    att = step("identity").attestation(spec=GOLDEN["rogueSpec"], status={})
    out = run(att, step("identity").now, settings=monitor.Settings(bundle=ROGUE_BUNDLE))
    assert out.evidence_reason == R.AWAITING_ACTIVATION
    assert out.status.enrollment is not None


def test_ek_public_must_be_the_certified_key(good: Step) -> None:
    spec = good.mutable_spec()
    spec["tpm"]["ekPublic"] = GOLDEN["rogueSpec"]["tpm"]["ekPublic"]
    assert run(good.attestation(spec), good.now).evidence_reason == R.EK_PUBLIC_MISMATCH


def test_another_tpm_after_enrollment_is_ek_changed(good: Step) -> None:
    both = monitor.Settings(
        bundle=type(BUNDLE)(
            roots=BUNDLE.roots + ROGUE_BUNDLE.roots,
            intermediates=BUNDLE.intermediates + ROGUE_BUNDLE.intermediates,
        )
    )
    out = run(good.attestation(spec=GOLDEN["rogueSpec"]), good.now, settings=both)
    assert out.evidence_reason == R.EK_CHANGED
    assert "delete the NodeAttestation" in verdict_message(out, "tpm")


def test_ak_without_restricted_attribute_is_refused(good: Step) -> None:
    spec = good.mutable_spec()
    raw = bytearray(base64.b64decode(spec["tpm"]["akPublic"]))
    raw[7] &= ~0x01  # objectAttributes bit 16 (restricted): bytes 6..9 after size, type, nameAlg
    spec["tpm"]["akPublic"] = base64.b64encode(bytes(raw)).decode()
    out = run(good.attestation(spec), good.now)
    assert out.evidence_reason == R.AK_ATTRIBUTES_INVALID


def test_wrong_activation_answer() -> None:
    s = step("enrolled")
    spec = s.mutable_spec()
    spec["tpm"]["activation"]["credential"] = base64.b64encode(b"\x00" * 32).decode()
    out = run(s.attestation(spec), s.now)
    assert out.evidence_reason == R.ACTIVATION_FAILED
    assert out.status.enrollment is not None
    assert out.status.enrollment.state == "Challenged"


def test_one_ek_cannot_enroll_two_nodes() -> None:
    s = step("identity")
    out = run(s.attestation(), s.now, ek_enrolled_by="node-7")
    assert out.evidence_reason == R.EK_ALREADY_ENROLLED
    assert "node-7" in verdict_message(out, "tpm")


def test_stale_evidence_revokes(good: Step) -> None:
    first = run(good.attestation(), good.now)
    later = good.attestation(status=first.status.model_dump(mode="json", by_alias=True))
    issued = first.status.evidence.challenge.issued_time  # type: ignore[union-attr]
    out = run(later, issued + timedelta(seconds=60))
    assert verdict(out, "hyperwall") == ("Rejected", R.EVIDENCE_STALE)
    assert out.status.verified_profiles == []


def test_ek_certificate_not_yet_valid(good: Step) -> None:
    out = run(good.attestation(), good.now - timedelta(days=3650))
    assert out.evidence_reason == R.EK_CERTIFICATE_UNTRUSTED
    assert "not valid before" in verdict_message(out, "tpm")


def test_no_tpm_evidence() -> None:
    out = run(step("good").attestation(spec={}), step("good").now)
    assert out.evidence_reason == R.NO_EVIDENCE


def test_malformed_base64(good: Step) -> None:
    spec = good.mutable_spec()
    spec["tpm"]["quote"]["signature"] = "AAAA" + "A"  # not a multiple of 4
    spec_model = NodeAttestationSpec.model_validate(spec)
    att = good.attestation()
    challenge = PUBLISHED.find(good.spec["tpm"]["quote"]["nonce"])
    result = verify(spec_model, att.status.enrollment, challenge, policies(), BUNDLE, good.now)
    assert result.decisions[0].reason == R.MALFORMED_EVIDENCE
    assert "spec.tpm.quote.signature" in result.decisions[0].message


def test_truncated_quote_is_malformed_not_a_crash(good: Step) -> None:
    spec = good.mutable_spec()
    raw = base64.b64decode(spec["tpm"]["quote"]["attest"])
    spec["tpm"]["quote"]["attest"] = base64.b64encode(raw[:20]).decode()
    assert run(good.attestation(spec), good.now).evidence_reason == R.QUOTE_SIGNATURE_INVALID


def test_node_without_a_node_object(good: Step) -> None:
    out = run(good.attestation(), good.now, node=False)
    assert out.evidence_reason == R.NODE_NOT_FOUND
    assert out.label_patch == {}


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(["attest", "signature"]), index=st.integers(0, 400), bit=st.integers(0, 7)
)
def test_any_single_bit_flip_in_the_quote_is_rejected(field: str, index: int, bit: int) -> None:
    good = step("good")
    spec = good.mutable_spec()
    raw = bytearray(base64.b64decode(spec["tpm"]["quote"][field]))
    raw[index % len(raw)] ^= 1 << bit
    spec["tpm"]["quote"][field] = base64.b64encode(bytes(raw)).decode()
    out = run(good.attestation(spec), good.now)
    assert out.evidence_reason != R.VERIFIED
    assert out.status.verified_profiles == []


def verdict_message(out: monitor.StepOutput, profile: str) -> str:
    for v in out.status.verdicts:
        if v.profile == profile:
            return v.message
    raise KeyError(profile)


def test_status_models_round_trip(good: Step) -> None:
    out = run(good.attestation(), good.now)
    again = NodeAttestationStatus.model_validate(out.status.model_dump(mode="json", by_alias=True))
    assert again == out.status


# --------------------------------------------------------------------------- one pipeline


@pytest.mark.parametrize("name", ["identity", "enrolled", "good", "violation", "pcrExtended"])
def test_the_verifier_step_runs_the_verify_pipeline_once(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`monitor.step` (what the verifier runs) composes no stage itself: it calls `verify`,
    the function these tests exercise, exactly once, and reports what it returned."""
    from sod_operator.attestation import verify as verify_module

    calls: list[verify_module.Verification] = []

    def spy(*args: object, **kwargs: object) -> verify_module.Verification:
        result = verify_module.verify(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(result)
        return result

    monkeypatch.setattr(monitor, "verify", spy)
    s = step(name)
    out = run(s.attestation(), s.now)
    [result] = calls
    assert [(v.profile, v.reason) for v in out.status.verdicts] == [
        (d.profile, d.reason) for d in result.decisions
    ]
    assert not hasattr(monitor, "check_quote")
    assert not hasattr(monitor, "evaluate_profile")
