"""When the agent writes evidence: pure decisions over the verifier's status and local state.

The verifier keeps one outstanding nonce and issues the next as soon as evidence consumed
the previous one. The agent therefore:

* answers each nonce at most once (a second answer to a consumed nonce would be rejected
  as a replay), remembering the last answered nonce across restarts from its own spec;
* paces itself: a new nonce is answered `interval` after the previous answer, unless its
  claims changed (e.g. a memory violation), which is reported at once, or its node is not
  `Ready` (stale or rejected evidence), when it answers within `RECOVERY_SECONDS` so trust
  returns as soon as the evidence is good again;
* answers an enrollment challenge (credential activation) as soon as it appears.
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

RECOVERY_SECONDS = 1.0
"""Pacing while the node is not Ready (bounded, so a persistent rejection is no busy loop)."""


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
    """Monotonic time of the last quote written."""
    answered_claims: str | None = None
    """Claims digest (hex) of the last quote written."""
    answered_challenge: str | None = None
    """SHA-256 of the enrollment credential blob last answered (or found unanswerable)."""

    @classmethod
    def from_spec(cls, spec: NodeAttestationSpec | None) -> AgentState:
        """Resume after a restart from the evidence already in the apiserver: never answer the
        nonce the previous run answered, but answer the outstanding one at once."""
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
    """Until the next round at the latest; a status change (the watch) or the claims poll
    starts one earlier. `math.inf`: nothing is due, only a change starts the next round."""
    why: str

    @property
    def publish(self) -> bool:
        return self.identity or self.activate or self.quote_nonce is not None


def plan(
    exists: bool,
    has_identity: bool,
    status: NodeAttestationStatus,
    state: AgentState,
    claims_hex: str,
    now: float,
    interval: float,
) -> Plan:
    """Decide the agent's next write from the verifier's status and the agent's memory."""
    if not exists:
        return Plan(None, False, True, interval, "creating the NodeAttestation")
    enrollment = status.enrollment
    activate = (
        enrollment is not None
        and enrollment.state == EnrollmentState.CHALLENGED
        and enrollment.credential_blob is not None
        and blob_id(enrollment.credential_blob) != state.answered_challenge
    )
    nonce = status.challenge.nonce if status.challenge is not None else None
    fresh = nonce if nonce is not None and nonce != state.answered_nonce else None
    if not has_identity:
        return Plan(fresh, activate, True, interval, "the spec lost the TPM evidence")
    if fresh is None:
        if activate:
            return Plan(None, True, False, interval, "answering the enrollment challenge")
        # Not `interval`: with `--interval 0` that re-read the claims in a busy loop (seen in
        # the benchmarks); a new nonce arrives as a status change and wakes the agent.
        return Plan(None, False, False, math.inf, "waiting for a new nonce")
    if activate or state.answered_at is None:
        return Plan(fresh, activate, False, interval, "first answer")
    if claims_hex != state.answered_claims:
        return Plan(fresh, False, False, interval, "claims changed")
    pace = interval if ready(status) else min(interval, RECOVERY_SECONDS)
    due = state.answered_at + pace
    if now >= due:
        return Plan(
            fresh, False, False, interval, "interval elapsed" if ready(status) else "recovering"
        )
    return Plan(None, False, False, due - now, "pacing")
