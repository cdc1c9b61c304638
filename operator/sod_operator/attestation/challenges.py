"""The verifier's published nonces: when to issue the next one and which to keep (pure).

One list for the whole fleet (`ChallengeList`, in a ConfigMap), not one nonce per node: a
round then costs the API server one small write for every node together instead of a status
write per node. Freshness is unchanged: a nonce is unpredictable until published, so a quote
answering it cannot be older than its `issuedTime`, whichever node made it (the quote's
qualifying data binds the claims, and the AK's signature the TPM). What a per-node, single-use
nonce also gave, that an older quote of the same node cannot be sent again, the verifier keeps
by the quote's TPM clock (`EvidenceRecord.tpm_clock`, see `monitor`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sod_operator.api.v1alpha1.nodeattestation import (
    MAX_CHALLENGES,
    NONCE_BYTES,
    Challenge,
    ChallengeList,
)
from sod_operator.attestation.enroll import Entropy


def rotate(
    current: ChallengeList,
    now: datetime,
    interval: timedelta,
    keep_for: timedelta,
    entropy: Entropy,
    margin: timedelta | None = None,
) -> ChallengeList | None:
    """The list to publish now, or None when the published one stands.

    A new nonce once the newest is `interval` old (or there is none); nonces issued more than
    `keep_for` (the longest freshness bound: no answer to them could be fresh) and a `margin`
    (default: one `interval`) ago are dropped, and at most `MAX_CHALLENGES` are kept. The
    margin lets evidence answering a nonce expire as `EvidenceStale`, judged at its expiry,
    before the nonce is dropped (and the same quote would read `NonceMismatch`). A clock that
    went back (the newest nonce issued in the future) gets a new nonce too, so rounds never
    stop."""
    newest = current.newest
    due = newest is None or not (now - interval < newest.issued_time <= now)
    if not due:
        return None
    fresh = Challenge(nonce=entropy(NONCE_BYTES).hex(), issued_time=now)
    oldest = now - keep_for - (interval if margin is None else margin)
    kept = [c for c in current.challenges if oldest <= c.issued_time <= now]
    return ChallengeList(challenges=[fresh, *kept][:MAX_CHALLENGES])


def next_rotation(current: ChallengeList, now: datetime, interval: timedelta) -> timedelta:
    """How long until `rotate` issues the next nonce."""
    newest = current.newest
    if newest is None or newest.issued_time > now:
        return timedelta(0)
    return max(newest.issued_time + interval - now, timedelta(0))
