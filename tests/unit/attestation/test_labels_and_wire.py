"""Labels from verdicts, the agent↔verifier wire protocol, and the policy model's rules.

Covers: label keys and values, the merge patch (only our prefix, deletions as null), label
length limits; the pinned reason and condition names; the canonical claims digest and the
quote's qualifying data (deterministic, domain-separated, order-independent); policy
validation errors with field paths; TPM structure parsing of recorded blobs (Names, trailing
bytes, truncation). Not covered: verification flows (test_verify, test_monitor).
"""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from sod_operator.api.constants import PROFILE_LABEL_PREFIX, profile_label
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.nodeattestation import (
    AttestationConditionType,
    AttestationReason,
    Claims,
    RuntimeCounter,
    claims_digest,
    qualifying_data,
)
from sod_operator.attestation import labels, tpm

from tests.unit.attestation.conftest import Step, step


def test_label_key_and_value() -> None:
    assert labels.desired_labels(["hyperwall"]) == {
        "sod.node-restriction.kubernetes.io/profile.hyperwall": "verified"
    }


def test_patch_is_empty_when_nothing_changes() -> None:
    current = {profile_label("a"): "verified", "other": "x"}
    assert labels.label_patch(current, labels.desired_labels(["a"])) == {}


def test_patch_never_touches_foreign_labels() -> None:
    current = {"sod.dev/simulated-architecture": "hyperwall", "kubernetes.io/os": "linux"}
    assert labels.label_patch(current, {}) == {}


def test_a_forged_label_value_is_corrected() -> None:
    current = {profile_label("a"): "Verified-by-me"}
    assert labels.label_patch(current, labels.desired_labels(["a"])) == {
        profile_label("a"): "verified"
    }


def test_profile_names_too_long_for_a_label_are_never_labelled() -> None:
    long_name = "x" * (labels.MAX_PROFILE_NAME_FOR_LABEL + 1)
    assert labels.desired_labels([long_name]) == {}
    ok = "x" * labels.MAX_PROFILE_NAME_FOR_LABEL
    assert len(profile_label(ok).split("/", 1)[1]) == 63


def test_verified_from_labels_reads_only_verified_values() -> None:
    current = {profile_label("a"): "verified", profile_label("b"): "no", "x": "verified"}
    assert labels.verified_from_labels(current) == ["a"]
    assert PROFILE_LABEL_PREFIX == "sod.node-restriction.kubernetes.io/profile."


def test_reasons_are_pinned() -> None:
    """Persisted on the wire: renaming one breaks every stored verdict and alert rule."""
    assert {r.value for r in AttestationReason} == {
        "Verified", "Enrolled", "NoEvidence", "MalformedEvidence", "NoQuote", "NodeNotFound",
        "EkCertificateUntrusted", "EkPublicMismatch", "EkUnsupported", "EkAlreadyEnrolled",
        "EkChanged", "AkAttributesInvalid", "AwaitingCredentialActivation",
        "CredentialActivationFailed", "AkNotEnrolled", "NonceMismatch", "QuoteMalformed",
        "QuoteSignatureInvalid", "QualifyingDataMismatch", "PcrSelectionMismatch",
        "PcrDigestMismatch", "QuoteReplayed", "EvidenceStale", "NoAttestationPolicy",
        "ArchitectureMismatch", "ArchitectureNotEnrolled",
        "PcrBankMismatch", "PcrNotQuoted", "PcrValueMismatch", "CpuFlagMissing",
        "ModuleParameterMismatch", "RuntimeCounterMissing", "RuntimeThresholdExceeded",
        "EventLogMissing", "EventLogMalformed", "EventLogMismatch", "EventNotAllowed",
        "SecureBootDisabled",
    }  # fmt: skip
    assert {c.value for c in AttestationConditionType} == {"Ready", "Enrolled"}


def test_claims_digest_is_canonical() -> None:
    a = Claims.model_validate({"architecture": "hyperwall", "cpuFlags": ["a", "b"]})
    b = Claims.model_validate({"cpuFlags": ["a", "b"], "architecture": "hyperwall"})
    assert claims_digest(a) == claims_digest(b)
    c = a.model_copy(update={"counters": [RuntimeCounter(name="memoryViolations", value=1)]})
    assert claims_digest(a) != claims_digest(c)


def test_qualifying_data_binds_nonce_and_claims() -> None:
    claims = Claims(architecture="hyperwall")
    nonce = bytes(32)
    q = qualifying_data(nonce, claims)
    assert len(q) == 32  # fits TPM2B_DATA (at most 64 bytes)
    assert q != qualifying_data(b"\x01" + nonce[1:], claims)
    assert q != qualifying_data(nonce, Claims(architecture="datasafe"))


def test_policy_rejects_duplicate_pcrs() -> None:
    with pytest.raises(ValidationError, match=r"pcrs\[1\].index: PCR 0 appears more than once"):
        AttestationPolicy.model_validate(
            {
                "tpm": {
                    "pcrs": [
                        {"index": 0, "values": ["00" * 32]},
                        {"index": 0, "values": ["11" * 32]},
                    ]
                }
            }
        )


def test_policy_rejects_digests_of_the_wrong_size() -> None:
    with pytest.raises(ValidationError, match=r"pcrs\[0\].values\[0\]: must be 96 hex digits"):
        AttestationPolicy.model_validate(
            {"tpm": {"pcrBank": "SHA384", "pcrs": [{"index": 0, "values": ["00" * 32]}]}}
        )


def test_policy_rejects_duplicate_counters() -> None:
    # The message of every list-type map (base.unique_map), as for kernel modules.
    with pytest.raises(
        ValidationError, match=r"duplicate counter 'memoryViolations' \(items 0 and 1\)"
    ):
        AttestationPolicy.model_validate(
            {
                "runtime": [
                    {"counter": "memoryViolations", "max": 0},
                    {"counter": "memoryViolations", "max": 1},
                ]
            }
        )


def test_policy_defaults() -> None:
    p = AttestationPolicy()
    assert p.freshness_seconds == 60
    assert p.tpm is None
    assert p.runtime == []


def test_recorded_ak_name_matches_what_the_verifier_enrolled(good: Step) -> None:
    ak = tpm.parse_tpm2b_public(base64.b64decode(good.spec["tpm"]["akPublic"]))
    assert ak.name.hex() == good.status_before["enrollment"]["akName"]
    assert tpm.ak_problem(ak) is None
    ek = tpm.parse_tpm2b_public(base64.b64decode(good.spec["tpm"]["ekPublic"]))
    assert tpm.ek_problem(ek) is None


def test_trailing_bytes_after_a_public_area_are_refused(good: Step) -> None:
    raw = base64.b64decode(good.spec["tpm"]["akPublic"]) + b"\x00"
    with pytest.raises(tpm.TpmFormatError, match="trailing bytes"):
        tpm.parse_tpm2b_public(raw)


def test_truncated_quote_names_the_field(good: Step) -> None:
    raw = base64.b64decode(good.spec["tpm"]["quote"]["attest"])
    with pytest.raises(tpm.TpmFormatError, match="truncated at"):
        tpm.parse_quote(raw[:30])


def test_quote_structure_of_the_recording(good: Step) -> None:
    info = tpm.parse_quote(base64.b64decode(good.spec["tpm"]["quote"]["attest"]))
    assert [s.indices for s in info.pcr_select if s.indices] == [tuple(range(8))]
    assert len(info.extra_data) == 32


def test_kdfa_output_length() -> None:
    assert len(tpm.kdfa(tpm.Alg.SHA256, b"k", b"STORAGE", b"u", b"", 128)) == 16
    assert len(tpm.kdfa(tpm.Alg.SHA256, b"k", b"INTEGRITY", b"", b"", 256)) == 32


def test_other_steps_are_recorded() -> None:
    assert step("pcrExtended").spec["tpm"]["quote"]["pcrs"]


def test_example_profiles_carry_the_sandbox_golden_values() -> None:
    """Each profile in examples/profiles/ names the PCR values of the sandbox's simulated
    firmware and hypervisor of *its* architecture; this pins them to that boot log, so
    changing one without the other fails here."""
    from pathlib import Path

    import yaml
    from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
    from sod_operator.attestation import eventlog, measuredboot
    from sod_testbed.swtpm import boot_log_bytes, golden_pcrs

    from tests.unit.attestation.golden import GOLDEN_PCRS

    assert golden_pcrs("hyperwall") == GOLDEN_PCRS  # the recorded node is a HyperWall
    root = Path(__file__).resolve().parents[3] / "examples" / "profiles"
    seen: dict[str, str] = {}
    for path in sorted(root.glob("*.yaml")):
        policy = AttestationPolicy.model_validate(
            yaml.safe_load(path.read_text())["spec"]["attestation"]
        )
        assert policy.tpm is not None, path
        assert policy.architecture is not None, path
        golden = golden_pcrs(policy.architecture)
        assert {p.index: p.values for p in policy.tpm.pcrs} == {
            i: [v] for i, v in golden.items()
        }, path
        # Architectures boot different firmware and hypervisors: no two share PCR 0 or 4.
        for pcr in (0, 4):
            assert golden[pcr] not in seen, (path, pcr, seen.get(golden[pcr]))
            seen[golden[pcr]] = path.name
        if policy.measured_boot is not None:  # the reference state of the firmware's log
            log = eventlog.parse(boot_log_bytes(policy.architecture))
            assert policy.measured_boot == measuredboot.reference_state([log], [0, 4, 7]), path
