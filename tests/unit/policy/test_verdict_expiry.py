"""Fail closed without any verifier (issue 17 item 2): a verified profile whose verdict expired
is void, even while its label is still on the node; its expiry is the verdict's, moved later by
the verifier's fleet renewal of the same evidence (item 3). Pure: the clock is `now`, passed in."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_KEY, Renewal, RenewalList
from sod_operator.api.v1alpha1.parsing import ManifestError
from sod_operator.api.v1alpha1.securevm import RelocationTrigger
from sod_operator.policy.observed import (
    VerifiedVerdicts,
    effective_expiries,
    renewals_from_configmap,
    verdict_expiries,
    verified_verdicts,
)
from sod_operator.policy.plan import CreateMigration, PatchVM

from tests.unit.policy.scenario import NS, T0, VM_B, Scenario, actions, condition

FRESH = 120  # seconds: the verdicts' freshness bound in these tests


def attested(s: Scenario, node: str, seconds: float, *profiles: str) -> Scenario:
    """The verifier's verdicts for `node`: `profiles` verified until now + `seconds`."""
    expiry = s.now + timedelta(seconds=seconds)
    s.world.apply_attestation(node, dict.fromkeys(profiles, expiry), s.now)
    return s


def deployed(**extra) -> Scenario:
    """VM-B compliant on hw-1; hw-1 and hw-2 verified hyperwall until T0 + FRESH."""
    s = Scenario().profiles("hyperwall", "nohype", "tpm")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("plain-1")
    attested(s, "hw-1", FRESH, "hyperwall")
    attested(s, "hw-2", FRESH, "hyperwall")
    s.securevm("vm", VM_B, **extra).vm_for("vm").vmi_for("vm", "hw-1")
    s.apply_status("vm", s.plan("vm"))
    return s


def test_decodes_only_verified_verdicts_with_an_expiry():
    body = {
        "status": {
            "verdicts": [
                {"profile": "a", "result": "Verified", "expiryTime": "2026-01-01T12:02:00Z"},
                {"profile": "b", "result": "Rejected", "expiryTime": "2026-01-01T12:02:00Z"},
                {"profile": "c", "result": "Verified"},
            ]
        }
    }
    assert verdict_expiries(body) == {"a": T0 + timedelta(seconds=120)}
    assert verdict_expiries({}) == {}


# --- the verifier's fleet renewals (issue 17 item 3) -------------------------------------------

DIGEST = "d" * 64
EVIDENCE = T0 - timedelta(seconds=100)
EXPIRY = T0 + timedelta(seconds=20)  # evidence + 120 s of freshness


def record(digest: str | None = DIGEST) -> dict:
    """A NodeAttestation: `a` verified (evidence of EVIDENCE, expiring at EXPIRY), `b` rejected."""
    verdicts = [
        {"profile": "a", "result": "Verified", "evidenceTime": "2026-01-01T11:58:20Z",
         "expiryTime": "2026-01-01T12:00:20Z"},
        {"profile": "b", "result": "Rejected", "evidenceTime": "2026-01-01T11:58:20Z",
         "expiryTime": "2026-01-01T12:00:20Z"},
    ]  # fmt: skip
    evidence = {"contentSha256": digest} if digest else {}
    return {"status": {"evidence": evidence, "verdicts": verdicts}}


def renewal(seconds_after_evidence: float, digest: str = DIGEST) -> Renewal:
    return Renewal(
        evidence_time=EVIDENCE + timedelta(seconds=seconds_after_evidence), content_sha256=digest
    )


def test_the_kept_view_holds_only_verified_verdicts_and_the_recorded_digest():
    assert verified_verdicts(record()) == VerifiedVerdicts({"a": (EXPIRY, EVIDENCE)}, DIGEST)
    assert verified_verdicts({}) == VerifiedVerdicts()


def test_a_later_renewal_of_the_same_evidence_moves_the_expiry_by_as_much():
    assert verdict_expiries(record(), renewal(90)) == {"a": EXPIRY + timedelta(seconds=90)}


@pytest.mark.parametrize(
    ("why", "body", "renew"),
    [
        ("no renewal", record(), None),
        ("an earlier renewal", record(), renewal(-30)),
        ("a renewal of the same moment", record(), renewal(0)),
        ("a renewal of other evidence", record(), renewal(90, digest="e" * 64)),
        ("no recorded digest", record(digest=None), renewal(90)),
    ],
)
def test_any_other_renewal_changes_nothing(why: str, body: dict, renew: Renewal | None):
    assert verdict_expiries(body, renew) == {"a": EXPIRY}, why


def test_a_rejected_profile_stays_void_whatever_the_renewal():
    assert "b" not in effective_expiries(verified_verdicts(record()), renewal(90))


def configmap(data: object) -> dict:
    return {"metadata": {"name": "sod-attestation-renewals"}, "data": {RENEWALS_KEY: data}}


def test_the_renewals_configmap_parses_and_a_missing_one_renews_nothing():
    listed = RenewalList(renewals={"hw-1": renewal(90)})
    body = configmap(listed.model_dump_json(by_alias=True))
    assert renewals_from_configmap(body) == listed
    assert renewals_from_configmap(None) == RenewalList()
    assert renewals_from_configmap({"data": {}}) == RenewalList()


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ("{not json", "data.renewals.json"),
        (json.dumps({"renewals": {"n": {"evidenceTime": "2026-01-01T12:00:00Z"}}}),
         "contentSha256"),
        (json.dumps({"renewals": {"n": {"evidenceTime": "2026-01-01T12:00:00",
                                        "contentSha256": DIGEST}}}), "no time zone"),
    ],
)  # fmt: skip
def test_an_unparsable_renewals_configmap_is_refused_with_where(data: str, where: str):
    with pytest.raises(ManifestError, match=where):
        renewals_from_configmap(configmap(data))


def test_a_compliant_vm_wakes_itself_at_its_verdicts_expiry():
    s = deployed()
    plan = s.plan("vm", at=timedelta(seconds=20))
    assert condition(plan, "Compliant") == ("True", "CompliantNode")
    assert plan.requeue_after == FRESH - 20


def test_an_expired_verdict_voids_the_label_and_relocates_with_the_reason():
    s = deployed()
    attested(s, "hw-2", 2 * FRESH, "hyperwall")  # hw-2 renewed; hw-1's verifier went quiet
    plan = s.later(FRESH).plan("vm")  # exactly at hw-1's expiry: void
    assert condition(plan, "Compliant") == ("False", "TrustExpired")
    compliant = next(c for c in plan.status.conditions or [] if c.type == "Compliant")
    assert "expired and no verifier renewed them" in compliant.message
    assert "hyperwall at 2026-01-01T12:02:00+00:00" in compliant.message
    (mig,) = actions(plan, CreateMigration)
    rec = plan.status.relocation
    assert rec is not None
    assert rec.trigger is RelocationTrigger.TRUST_EXPIRED
    assert mig.body["metadata"]["labels"]["sod.dev/trigger"] == "TrustExpired"


def test_a_migration_is_steered_past_nodes_whose_label_outlived_its_verdict():
    s = deployed()
    s.node("hw-3", "hyperwall")
    attested(s, "hw-3", 2 * FRESH, "hyperwall")  # hw-3 renewed; hw-1 and hw-2 expire
    plan = s.later(FRESH).plan("vm")
    rec = plan.status.relocation
    assert rec is not None
    assert rec.steered_to == "hw-3"  # the scheduler alone could pick hw-2 (its label is on)


def test_with_every_verdict_expired_the_fail_closed_deadline_applies():
    s = deployed(relocation={"failClosed": {"action": "Stop", "deadlineSeconds": 30}})
    first = s.later(FRESH).plan("vm")
    assert actions(first, CreateMigration) == []
    assert condition(first, "Relocating") == ("False", "NoCompliantNode")
    assert condition(first, "Compliant") == ("False", "TrustExpired")
    assert first.requeue_after == 30
    s.apply_status("vm", first).later(31)
    plan = s.plan("vm")
    (stop,) = actions(plan, PatchVM)
    assert stop.patch["spec"]["runStrategy"] == "Halted"
    assert condition(plan, "Ready") == ("False", "FailClosedStopped")


def test_a_renewal_before_expiry_keeps_the_vm_in_place():
    s = deployed()
    attested(s.later(FRESH - 1), "hw-1", FRESH, "hyperwall")
    plan = s.later(1).plan("vm")
    assert condition(plan, "Compliant") == ("True", "CompliantNode")
    assert actions(plan, CreateMigration) == []


def test_only_a_change_of_validity_wakes_securevms():
    s = deployed()
    w = s.world
    assert w.keys_on_node("hw-1") == {(NS, "vm")}
    renewed = {"hyperwall": s.now + timedelta(seconds=2 * FRESH)}
    assert w.apply_attestation("hw-1", renewed, s.now) == set()  # a plain renewal
    lapsed = {"hyperwall": s.now - timedelta(seconds=1)}
    assert w.apply_attestation("hw-1", lapsed, s.now) == {(NS, "vm")}
    assert w.apply_attestation("hw-1", renewed, s.now) == {(NS, "vm")}  # valid again
    # A renewal withdrawn: still valid, but the VM planned to wake at the later expiry.
    assert w.apply_attestation("hw-1", {"hyperwall": s.now + timedelta(seconds=FRESH)}, s.now) == {
        (NS, "vm")
    }
