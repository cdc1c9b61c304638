"""When the agent writes evidence: pure decisions over the published nonces, the verifier's
status and local state.

The verifier publishes one list of recent nonces for the whole fleet (a ConfigMap,
`ChallengeList`) and issues a new one every `--challenge-interval`; it accepts a quote over
any listed nonce and no longer spends a nonce per node (issue 17: a round must cost the API
server one write, the agent's). The agent therefore:

* quotes over the *newest* published nonce, and answers each new nonce at most once: a
  second answer with the same claims would only cost a write that says nothing new;
* paces itself: a new nonce is answered `interval` after the previous answer, unless its node
  is not `Ready` (stale or rejected evidence), when it answers at once so trust returns as
  soon as the evidence is good again (no busy loop: new nonces come at the verifier's pace);
* reports a claims change (e.g. a memory violation) at once, over the newest nonce even if it
  already answered it: detection must not wait for the next nonce, and the verifier accepts
  a quote over a listed nonce whose TPM clock is later than the recorded one;
* answers an enrollment challenge (credential activation) as soon as it appears;
* resumes after a restart from its own spec: the nonce it finds there counts as answered
  (with those claims), so a restart costs no write, but the next new nonce is answered at
  once (the pacing clock did not survive the restart).

Without a nonce (no ConfigMap yet, or a broken one) it writes only its identity and
activation: a quote needs a nonce the verifier published.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

from sod_operator.api.v1alpha1.nodeattestation import (
    AttestationConditionType,
    EnrollmentState,
    NodeAttestationSpec,
    NodeAttestationStatus,
    claims_digest,
)


def ready(status: NodeAttestationStatus) -> bool:
    return any(
        c.type == AttestationConditionType.READY and c.status == "True"
        for c in status.conditions or []
    )


@dataclass(frozen=True)
class AgentState:
    """What the agent remembers about its last write."""

    answered_nonce: str | None = None
    answered_at: float | None = None
    """Monotonic time of the last quote written (None: none by this run)."""
    answered_claims: str | None = None
    """Claims digest (hex) of the last quote written."""
    answered_challenge: str | None = None
    """SHA-256 of the enrollment credential blob last answered (or found unanswerable)."""

    @classmethod
    def from_spec(cls, spec: NodeAttestationSpec | None) -> AgentState:
        """Resume after a restart from the evidence already in the apiserver: the nonce the
        previous run answered counts as answered with the claims it was made over."""
        if spec is None or spec.tpm is None or spec.tpm.quote is None:
            return cls()
        return cls(
            answered_nonce=spec.tpm.quote.nonce,
            answered_claims=claims_digest(spec.claims).hex(),
        )

    def answered(self, nonce: str | None, claims_hex: str, now: float) -> AgentState:
        if nonce is None:
            return self
        return replace(self, answered_nonce=nonce, answered_at=now, answered_claims=claims_hex)

    def activated(self, blob: str) -> AgentState:
        return replace(self, answered_challenge=blob_id(blob))


def blob_id(blob: str) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    """What to do now, or how long to wait before asking again."""

    quote_nonce: str | None
    """Quote over this nonce now (None: keep the quote already published)."""
    activate: bool
    """Answer the enrollment challenge in `status.enrollment`."""
    identity: bool
    """(Re)write the TPM identity even without a new quote: the object does not exist yet,
    or its spec lost the TPM evidence."""
    wait_seconds: float
    """Until the next round at the latest; a change (the watches) or the claims poll starts
    one earlier. `math.inf`: nothing is due, only a change starts the next round."""
    why: str

    @property
    def publish(self) -> bool:
        return self.identity or self.activate or self.quote_nonce is not None


def _must_activate(status: NodeAttestationStatus, state: AgentState) -> bool:
    enrollment = status.enrollment
    return (
        enrollment is not None
        and enrollment.state == EnrollmentState.CHALLENGED
        and enrollment.credential_blob is not None
        and blob_id(enrollment.credential_blob) != state.answered_challenge
    )


def plan(
    exists: bool,
    has_identity: bool,
    status: NodeAttestationStatus,
    newest: str | None,
    state: AgentState,
    claims_hex: str,
    now: float,
    interval: float,
) -> Plan:
    """Decide the agent's next write from the newest published nonce (None: none published),
    the verifier's status of this node and the agent's memory."""
    if not exists:
        return Plan(None, False, True, interval, "creating the NodeAttestation")
    activate = _must_activate(status, state)
    fresh = newest if newest is not None and newest != state.answered_nonce else None
    if not has_identity:  # its quote is gone too: answer the newest nonce again
        return Plan(newest, activate, True, interval, "the spec lost the TPM evidence")
    changed = state.answered_claims is not None and claims_hex != state.answered_claims
    if newest is not None and changed:
        return Plan(newest, activate, False, interval, "claims changed")
    if fresh is None:
        if activate:
            return Plan(None, True, False, interval, "answering the enrollment challenge")
        # Not `interval`: with `--interval 0` that re-read the claims in a busy loop (seen in
        # the benchmarks); a new nonce arrives as a ConfigMap change and wakes the agent.
        why = "waiting for a new nonce" if newest is not None else "no nonce published yet"
        return Plan(None, False, False, math.inf, why)
    return _answer_new(fresh, activate, status, state, now, interval)


def _answer_new(
    fresh: str,
    activate: bool,
    status: NodeAttestationStatus,
    state: AgentState,
    now: float,
    interval: float,
) -> Plan:
    """A nonce not answered yet: at once, or `interval` after the previous answer."""
    if activate or state.answered_at is None:
        return Plan(fresh, activate, False, interval, "first answer")
    if not ready(status):
        return Plan(fresh, False, False, interval, "recovering")
    due = state.answered_at + interval
    if now >= due:
        return Plan(fresh, False, False, interval, "interval elapsed")
    return Plan(None, False, False, due - now, "pacing")
