"""Evidence honesty (issue 14): per profile, what is proven, what the node reports, what not."""

from __future__ import annotations

from sod_operator.policy.evidence import GUEST_LAUNCH, describe, statement

from tests.unit.policy.scenario import profile_spec


def test_sev_snp_separates_proof_from_the_nodes_own_word():
    st = statement(profile_spec("sev-snp"))
    assert any("EK is enrolled" in p for p in st.proves)
    assert any("PCR" in p for p in st.proves)
    assert "CPU flag sev_snp" in st.reported
    assert "module parameter kvm_amd.sev_snp=Y" in st.reported
    assert st.unproven == (GUEST_LAUNCH,)


def test_a_profile_without_launch_security_claims_no_guest_attestation_gap():
    assert statement(profile_spec("tpm")).unproven == ()


def test_describe_names_the_profile_and_every_line():
    lines = describe("tdx", profile_spec("tdx"))
    assert lines[0] == "  tdx:"
    assert any("NOT proven" in line and "KubeVirt 1.9" in line for line in lines)


def test_sodctl_explain_prints_the_class_and_the_evidence():
    from sod_operator.cli.explain import _class_and_evidence
    from sod_operator.policy.evaluation import Resolution
    from sod_operator.policy.explain import Explanation

    ex = Explanation(resolution=Resolution(request=None, satisfying=("sev-snp",)))
    status = {"placementClass": {"profiles": ["sev-snp"], "vmSettings": "launchSecurity.snp"}}
    lines = _class_and_evidence(status, ex, {"sev-snp": profile_spec("sev-snp")})
    text = "\n".join(lines)
    assert "Placement class: [sev-snp]; the VM carries launchSecurity.snp" in text
    assert "reported by the node about itself: CPU flag sev_snp" in text
    assert "NOT proven" in text
