"""One trust-monitor step for one node: (NodeAttestation, Node, profiles, nonces, now) → what
to write.

Pure and level-triggered: everything the verifier needs to resume is in the NodeAttestation
(evidence, enrollment, verdicts), the published nonces and the node's labels, so a restart at
any point loses nothing and a repeated step writes nothing new.

The nonce lifecycle (issue 17: a round must be cheap for the API server):

* The verifier publishes one list of recent nonces for the whole fleet (`challenges.rotate`,
  a ConfigMap); an agent quotes over the newest. A quote answering a listed nonce is fresh
  from that nonce's `issuedTime` (measured by the verifier's own clock); any other nonce is
  `NonceMismatch`. Evidence older than a profile's `freshnessSeconds` revokes the profile (an
  agent gone silent produces no new evidence, so its last evidence ages out: fail closed).
* A nonce is no longer single use, so an older quote of the same node could be sent again
  while its nonce is listed: every quote must carry a TPM clock no earlier than the recorded
  evidence's (`QuoteReplayed`). The record is written whenever what the evidence says changes
  (`must_write`), so the quote a replay would have to undo is always the recorded one.
* The status is written only when it changes in substance: enrollment, verdicts, conditions,
  a rejection, or evidence that says something new. A round that only repeats good evidence
  costs the API server the agent's write alone: it yields a `Renewal` (this evidence's time,
  for the recorded content), which the verifier publishes for the whole fleet in one
  ConfigMap the operator reads (`RenewalList`; the operator voids a label past a verdict's
  renewed expiry). A renewal is *due* once a verified verdict has spent half its lifetime
  (as renewed by what is published): the write that keeps trust alive without a verifier is
  then well ahead of the expiry. Should the published renewals not keep up (the ConfigMap
  cannot be written), the status itself is renewed once three quarters are spent, by a round
  or by a timer.
* "Useful for" is the longest `freshnessSeconds` of any profile (or `ready_max_age_seconds`
  when none has a policy): `Ready` turns False when the newest valid evidence is older.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sod_operator.api.conditions import ConditionState, set_condition
from sod_operator.api.conditions import EventType as EventType  # re-exported: Event.type
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.base import Condition
from sod_operator.api.v1alpha1.nodeattestation import (
    AttestationConditionType,
    AttestationReason,
    Challenge,
    ChallengeList,
    Enrollment,
    EnrollmentState,
    EvidenceRecord,
    NodeAttestation,
    NodeAttestationStatus,
    ProfileVerdict,
    Renewal,
    TpmClock,
    VerdictResult,
    claims_digest,
    renewed_expiry,
)
from sod_operator.attestation import enroll, labels, platform
from sod_operator.attestation.ekcert import CaBundle
from sod_operator.attestation.enroll import Entropy
from sod_operator.attestation.verify import (
    Decision,
    Failure,
    Identity,
    VerifiedQuote,
    check_enrolled,
    check_identity,
    tpm_clock,
    verify,
)

R = AttestationReason


class EventReason(StrEnum):
    """Reasons of the Kubernetes Events the verifier emits. Persisted: never rename."""

    PROFILE_VERIFIED = "ProfileVerified"
    PROFILE_REVOKED = "ProfileRevoked"
    NODE_ENROLLED = "NodeEnrolled"
    ENROLLMENT_FAILED = "EnrollmentFailed"
    EVIDENCE_REJECTED = "EvidenceRejected"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: EventReason
    message: str


@dataclass(frozen=True)
class Settings:
    """Verifier-wide settings the pure step needs."""

    bundle: CaBundle
    ready_max_age_seconds: int = 120
    """How long valid evidence counts as `Ready` when no profile has an attestation policy
    (otherwise the longest profile `freshnessSeconds` decides)."""


@dataclass(frozen=True)
class NodeView:
    """What the verifier knows about the Node object (None in `StepInput.node`: no Node)."""

    labels: Mapping[str, str]


@dataclass(frozen=True)
class StepInput:
    attestation: NodeAttestation
    node: NodeView | None
    policies: Mapping[str, AttestationPolicy | None]
    """Every ServerSecurityProfile by name, with its attestation policy (None: none)."""
    now: datetime
    ek_enrolled_by: str | None = None
    """Another node that already enrolled the EK certificate this node presents."""
    enrollments: platform.Enrollments = field(default_factory=dict)
    """The platform team's PlatformEnrollments by EK fingerprint (architecture proofs)."""
    challenges: ChallengeList = field(default_factory=ChallengeList)
    """The nonces the verifier publishes (a quote must answer one of them)."""
    renewal: Renewal | None = None
    """This node's renewal as published (what the operator sees), if any."""


@dataclass(frozen=True)
class Transition:
    """A profile whose verdict changed on this node (for metrics and Events)."""

    profile: str
    verified: bool
    reason: AttestationReason


@dataclass(frozen=True)
class StepOutput:
    status: NodeAttestationStatus
    """The status to hold: the judged one when it is worth a write, else the one read."""
    judged: NodeAttestationStatus
    """The status as judged in this step, written or not (for the verifier's metrics)."""
    status_changed: bool
    label_patch: dict[str, str | None]
    events: tuple[Event, ...]
    transitions: tuple[Transition, ...]
    new_evidence: bool
    """A generation of evidence not yet recorded was judged in this step (a round that is not
    written is judged again at the next step; the verifier counts each generation once)."""
    answered: Challenge | None
    """The published nonce the spec's quote answers (None: none listed)."""
    evidence_reason: AttestationReason
    """Evidence-level result: `Verified` or why not."""
    requeue_after: timedelta | None
    """When the verdict changes by itself (an expiry) unless new evidence arrives first."""
    renewal: Renewal | None = None
    """The renewal this step's evidence gives the written status (None: none; to publish)."""
    renewal_due: bool = False
    """A written verdict has spent half its lifetime and `renewal` moves it: publish soon."""


def _quote_sha256(att: NodeAttestation) -> str | None:
    tpm_ev = att.spec.tpm
    if tpm_ev is None or tpm_ev.quote is None:
        return None
    q = tpm_ev.quote
    return hashlib.sha256(f"{q.nonce}|{q.attest}|{q.signature}".encode()).hexdigest()


def _content_sha256(att: NodeAttestation, quote: VerifiedQuote) -> str:
    """What the evidence says, without what makes each round's quote unique (nonce, clock,
    signature): equal for two rounds that change no verdict by themselves."""
    event_log = att.spec.tpm.quote.event_log if att.spec.tpm and att.spec.tpm.quote else None
    h = hashlib.sha256(claims_digest(quote.claims))
    h.update(f"|{quote.bank}|{quote.info.pcr_digest.hex()}|{event_log or ''}".encode())
    return h.hexdigest()


def _replay_floor(old: NodeAttestationStatus, enrollment: Enrollment | None) -> TpmClock | None:
    """The recorded quote's TPM clock, while the same AK is enrolled (a new TPM starts anew)."""
    record = old.evidence
    if record is None or record.tpm_clock is None or enrollment is None or old.enrollment is None:
        return None
    return record.tpm_clock if old.enrollment.ak_name == enrollment.ak_name else None


def step(inp: StepInput, settings: Settings, entropy: Entropy) -> StepOutput:
    """Advance one node's attestation; see the module docstring for the protocol."""
    att, now = inp.attestation, inp.now
    old = att.status
    events: list[Event] = []

    # 1. Identity and enrollment.
    enrollment: Enrollment | None = old.enrollment
    identity: Identity | None = None
    checked: Identity | Failure | None = None
    failure: Failure | None
    if att.spec.tpm is None:
        failure = Failure.of(R.NO_EVIDENCE, "spec.tpm is missing: the node sent no TPM evidence")
    else:
        checked = check_identity(att.spec.tpm, settings.bundle, now)
        if isinstance(checked, Failure):
            failure = checked
        else:
            identity = checked
            was_enrolled = enrollment is not None and enrollment.state == EnrollmentState.ENROLLED
            progressed = enroll.step(
                identity, enrollment, att.spec.tpm.activation, now, entropy, inp.ek_enrolled_by
            )
            enrollment, failure = progressed.enrollment, progressed.failure
            if progressed.enrolled:
                failure = check_enrolled(identity, enrollment)
                if not was_enrolled:
                    events.append(
                        Event(
                            EventType.NORMAL,
                            EventReason.NODE_ENROLLED,
                            f"attestation key {identity.ak_name[:20]}… bound to the EK "
                            "certificate by credential activation",
                        )
                    )
    enroll_failure = failure

    # 2. Which published nonce the quote answers; is this generation recorded already?
    record = old.evidence
    quote_sha = _quote_sha256(att)
    new_evidence = (
        quote_sha is not None
        and identity is not None
        and (
            record is None
            or (record.observed_generation != att.generation and record.quote_sha256 != quote_sha)
        )
    )
    answered = _answered(att, inp.challenges)
    useful = timedelta(seconds=useful_for(inp.policies, settings))

    # 3. The verification pipeline (re-run every step: cheap, and a CA bundle change applies).
    verification = verify(
        att.spec,
        enrollment,
        answered or inp.challenges.newest,
        inp.policies,
        settings.bundle,
        now,
        identity=checked,
        enrollment_failure=failure,
        missing_node=att.name if inp.node is None else None,
        enrollments=inp.enrollments,
        not_before=_replay_floor(old, enrollment),
    )
    evidence = verification.evidence
    if new_evidence and isinstance(evidence, Failure):
        events.append(
            Event(
                EventType.WARNING,
                EventReason.EVIDENCE_REJECTED,
                f"{evidence.reason}: {evidence.message}",
            )
        )

    # 4. Per-profile verdicts.
    decisions = list(verification.decisions)
    verdicts, transitions = _verdicts(old.verdicts, decisions, now)
    by_profile = {d.profile: d for d in decisions}
    for t in transitions:
        decision = by_profile.get(t.profile)
        why = (
            f"{decision.reason}: {decision.message}"
            if decision is not None
            else "the profile or its attestation policy was removed"
        )
        if t.verified:
            events.append(
                Event(
                    EventType.NORMAL,
                    EventReason.PROFILE_VERIFIED,
                    f"profile {t.profile!r} verified; label {labels.desired_labels([t.profile])}",
                )
            )
        else:
            events.append(
                Event(
                    EventType.WARNING,
                    EventReason.PROFILE_REVOKED,
                    f"profile {t.profile!r} revoked: {why}",
                )
            )
    verified = sorted(d.profile for d in decisions if d.verified and labels.labelable(d.profile))

    # 5. Conditions.
    conditions = _conditions(old, att.generation, enroll_failure, evidence, now, useful)
    if (
        enroll_failure is not None
        and enroll_failure.reason not in (R.AWAITING_ACTIVATION, R.NO_EVIDENCE)
        and _condition_changed(old, AttestationConditionType.ENROLLED, enroll_failure.reason)
    ):
        events.append(
            Event(
                EventType.WARNING,
                EventReason.ENROLLMENT_FAILED,
                f"{enroll_failure.reason}: {enroll_failure.message}",
            )
        )

    status = NodeAttestationStatus(
        observed_generation=att.generation,
        enrollment=enrollment,
        evidence=_record(att, quote_sha, answered, evidence, now, record)
        if new_evidence
        else record,
        verdicts=verdicts,
        verified_profiles=verified,
        conditions=conditions,
    )
    # Written at once: rejected evidence (always say why), and a spec rewritten around the
    # recorded quote (no new evidence, so nothing else would ever record that generation).
    recorded_again = (
        record is not None
        and quote_sha is not None
        and record.quote_sha256 == quote_sha
        and old.observed_generation != att.generation
    )
    rejected = new_evidence and isinstance(evidence, Failure)
    always = rejected or recorded_again
    written = status if must_write(old, status, now, always, inp.renewal) else old
    renewal = _renewal(att, written, evidence)
    patch: dict[str, str | None] = {}
    if inp.node is not None:
        patch = labels.label_patch(inp.node.labels, labels.desired_labels(verified))
    return StepOutput(
        status=written,
        judged=status,
        status_changed=written != old,
        label_patch=patch,
        events=tuple(events),
        transitions=tuple(transitions),
        new_evidence=new_evidence,
        answered=answered,
        evidence_reason=R.VERIFIED if isinstance(evidence, VerifiedQuote) else evidence.reason,
        requeue_after=_next_deadline(decisions, evidence, written, inp.renewal, now, useful),
        renewal=renewal,
        renewal_due=renewal is not None and renewal_due(written, inp.renewal, renewal, now),
    )


def _answered(att: NodeAttestation, challenges: ChallengeList) -> Challenge | None:
    tpm_ev = att.spec.tpm
    if tpm_ev is None or tpm_ev.quote is None:
        return None
    return challenges.find(tpm_ev.quote.nonce)


def _record(
    att: NodeAttestation,
    quote_sha: str | None,
    answered: Challenge | None,
    evidence: VerifiedQuote | Failure,
    now: datetime,
    previous: EvidenceRecord | None,
) -> EvidenceRecord:
    """The record of new evidence. Rejected evidence keeps the previous TPM clock floor:
    otherwise a rejected write would lift it, and an older good quote sent next would pass."""
    verified = evidence if isinstance(evidence, VerifiedQuote) else None
    floor = previous.tpm_clock if previous is not None else None
    return EvidenceRecord(
        observed_generation=att.generation,
        challenge=answered,
        received_time=now,
        quote_sha256=quote_sha,
        content_sha256=_content_sha256(att, verified) if verified is not None else None,
        tpm_clock=tpm_clock(verified.info) if verified is not None else floor,
    )


def must_write(
    old: NodeAttestationStatus,
    new: NodeAttestationStatus,
    now: datetime,
    always: bool,
    published: Renewal | None = None,
) -> bool:
    """Whether `new` is worth a status write: `always` (a rejection), it differs in substance,
    records evidence that says something new, or renews an expiry three quarters spent even
    with the `published` renewal (the fleet's renewals are not keeping up)."""
    if old.evidence is None or always or _substance(old) != _substance(new):
        return True
    if new.evidence is not None and new.evidence.content_sha256 != old.evidence.content_sha256:
        return True
    if _lifetimes(old) != _lifetimes(new):
        return True  # a renewal moves an expiry by the written lifetime: it must be current
    later = {v.profile: v.expiry_time for v in new.verdicts}
    return any(
        _left_of_lifetime(v, old, published, now, later.get(v.profile)) <= 0.25
        for v in old.verdicts
    )


def _lifetimes(status: NodeAttestationStatus) -> dict[str, timedelta]:
    """Each verified verdict's lifetime (its profile's `freshnessSeconds` when judged)."""
    return {
        v.profile: v.expiry_time - v.evidence_time
        for v in status.verdicts
        if v.result == VerdictResult.VERIFIED and v.expiry_time and v.evidence_time
    }


def renewal_due(
    written: NodeAttestationStatus, published: Renewal | None, renewal: Renewal, now: datetime
) -> bool:
    """Whether `renewal` is worth publishing now: a written verified verdict has half its
    lifetime or less left (counting the `published` renewal), and `renewal` moves it later."""
    content = written.evidence.content_sha256 if written.evidence is not None else None
    for v in written.verdicts:
        if v.expiry_time is None or v.evidence_time is None:
            continue  # the compact renewal moves only verdicts that say their evidence time
        moved = renewed_expiry(v.expiry_time, v.evidence_time, content, renewal)
        if _left_of_lifetime(v, written, published, now, moved) <= 0.5:
            return True
    return False


def _left_of_lifetime(
    verdict: ProfileVerdict,
    written: NodeAttestationStatus,
    published: Renewal | None,
    now: datetime,
    moved_to: datetime | None,
) -> float:
    """The share of a written verified verdict's lifetime left (renewals counted), when
    `moved_to` would move its expiry later; 1.0 (nothing to renew) otherwise."""
    if verdict.result != VerdictResult.VERIFIED or moved_to is None:
        return 1.0
    if verdict.expiry_time is None or verdict.evidence_time is None:
        return 0.0
    content = written.evidence.content_sha256 if written.evidence is not None else None
    expiry = renewed_expiry(verdict.expiry_time, verdict.evidence_time, content, published)
    lifetime = (verdict.expiry_time - verdict.evidence_time).total_seconds()
    if moved_to <= expiry or lifetime <= 0:
        return 1.0
    return (expiry - now).total_seconds() / lifetime


def _renewal(
    att: NodeAttestation, written: NodeAttestationStatus, evidence: VerifiedQuote | Failure
) -> Renewal | None:
    """Valid evidence saying what the written record says renews the written verdicts (a
    different judgement would have been written: `must_write`)."""
    record = written.evidence
    if not isinstance(evidence, VerifiedQuote) or record is None or not record.content_sha256:
        return None
    if _content_sha256(att, evidence) != record.content_sha256:
        return None
    return Renewal(evidence_time=evidence.evidence_time, content_sha256=record.content_sha256)


def _substance(status: NodeAttestationStatus) -> tuple[object, ...]:
    """A status without what every round changes (generations, times, the evidence record)."""
    verdicts = tuple((v.profile, v.result, v.reason, v.message) for v in status.verdicts)
    conditions = tuple((c.type, c.status, c.reason, c.message) for c in status.conditions or [])
    return (status.enrollment, verdicts, tuple(status.verified_profiles), conditions)


def useful_for(policies: Mapping[str, AttestationPolicy | None], settings: Settings) -> int:
    """Seconds evidence can be fresh for some profile (how long a nonce is worth keeping)."""
    bounds = [p.freshness_seconds for p in policies.values() if p is not None]
    return max(bounds) if bounds else settings.ready_max_age_seconds


def _verdicts(
    old: list[ProfileVerdict], decisions: list[Decision], now: datetime
) -> tuple[list[ProfileVerdict], list[Transition]]:
    previous = {v.profile: v for v in old}
    out: list[ProfileVerdict] = []
    transitions: list[Transition] = []
    for d in decisions:
        result = VerdictResult.VERIFIED if d.verified else VerdictResult.REJECTED
        before = previous.get(d.profile)
        was_verified = before is not None and before.result == VerdictResult.VERIFIED
        if was_verified != d.verified:
            transitions.append(Transition(d.profile, d.verified, d.reason))
        out.append(
            ProfileVerdict(
                profile=d.profile,
                result=result,
                reason=d.reason,
                message=d.message[:4096],
                last_transition_time=(
                    before.last_transition_time
                    if before is not None and before.result == result
                    else now
                ),
                evidence_time=d.evidence_time,
                expiry_time=d.expiry_time,
            )
        )
    # Profiles that disappeared: their verified labels are removed; report the revocation.
    for name, before in previous.items():
        if name not in {d.profile for d in decisions} and before.result == VerdictResult.VERIFIED:
            transitions.append(Transition(name, False, R.NO_ATTESTATION_POLICY))
    return out, transitions


def _condition_changed(old: NodeAttestationStatus, ctype: str, reason: str) -> bool:
    for c in old.conditions or []:
        if c.type == ctype:
            return c.reason != reason
    return True


def _conditions(
    old: NodeAttestationStatus,
    generation: int,
    enroll_failure: Failure | None,
    evidence: VerifiedQuote | Failure,
    now: datetime,
    useful: timedelta,
) -> list[Condition]:
    states = [c.to_state() for c in old.conditions or []]

    def put(ctype: AttestationConditionType, ok: bool, reason: str, message: str) -> None:
        nonlocal states
        states, _ = set_condition(
            states,
            ConditionState(
                type=str(ctype),
                status="True" if ok else "False",
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=now,
            ),
        )

    if enroll_failure is None:
        put(
            AttestationConditionType.ENROLLED,
            True,
            R.ENROLLED,
            "the attestation key is bound to a trusted EK by credential activation",
        )
    else:
        put(AttestationConditionType.ENROLLED, False, enroll_failure.reason, enroll_failure.message)
    if isinstance(evidence, Failure):
        put(AttestationConditionType.READY, False, evidence.reason, evidence.message)
    else:
        age = (now - evidence.evidence_time).total_seconds()
        if age >= useful.total_seconds():
            put(
                AttestationConditionType.READY,
                False,
                R.EVIDENCE_STALE,
                f"the newest valid evidence is {age:.0f}s old, older than every profile's "
                f"freshness bound ({useful.total_seconds():.0f}s): the agent is silent",
            )
        else:
            put(
                AttestationConditionType.READY,
                True,
                R.VERIFIED,
                "the latest quote is valid: signed by the enrolled AK over the current nonce",
            )
    return [Condition.from_state(s) for s in states]


def _next_deadline(
    decisions: list[Decision],
    evidence: VerifiedQuote | Failure,
    written: NodeAttestationStatus,
    published: Renewal | None,
    now: datetime,
    useful: timedelta,
) -> timedelta | None:
    deadlines = [d.expiry_time for d in decisions if d.verified and d.expiry_time is not None]
    if isinstance(evidence, VerifiedQuote):
        deadlines.append(evidence.evidence_time + useful)
    content = written.evidence.content_sha256 if written.evidence is not None else None
    for v in written.verdicts:  # without a round, renew the status when three quarters spent
        if v.result == VerdictResult.VERIFIED and v.expiry_time and v.evidence_time:
            expiry = renewed_expiry(v.expiry_time, v.evidence_time, content, published)
            deadlines.append(expiry - (v.expiry_time - v.evidence_time) / 4)
    future = [d for d in deadlines if d > now]
    if not future:
        return None
    return min(future) - now


def enrolled_ek(status: NodeAttestationStatus) -> str | None:
    """The EK certificate fingerprint a node has enrolled (for the one-EK-one-node check)."""
    e = status.enrollment
    if e is not None and e.state == EnrollmentState.ENROLLED:
        return e.ek_certificate_sha256
    return None
