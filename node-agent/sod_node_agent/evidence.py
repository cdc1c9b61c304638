"""Assemble a `NodeAttestationSpec` from one TPM session, the claims, the published nonce to
answer (`schedule.plan` picks it) and the verifier's status (its enrollment challenge).

The quote's qualifying data is `qualifying_data(nonce, claims)` (defined with the API), so
the claims written next to the quote are exactly the ones the TPM signed. The agent never
judges its own evidence.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sod_operator.api.v1alpha1.attestation_policy import PcrBank
from sod_operator.api.v1alpha1.nodeattestation import (
    MAX_EVENT_LOG_BASE64,
    AgentInfo,
    Claims,
    CredentialActivation,
    NodeAttestationSpec,
    NodeAttestationStatus,
    PcrValue,
    Quote,
    TpmEvidence,
    encode_event_log,
    qualifying_data,
)

from sod_node_agent import __version__
from sod_node_agent.tpm import PcrSelection, TpmError, TpmSession

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encoded(raw: bytes | None) -> str | None:
    # Read after the quote: firmware logs are complete once the OS runs, so it is the quoted
    # boot's log (the verifier refuses it otherwise).
    if raw is None:
        return None
    encoded = encode_event_log(raw)
    if len(encoded) > MAX_EVENT_LOG_BASE64:
        log.error("the boot event log (%d bytes) is too large to send; sending none", len(raw))
        return None
    return encoded


def read_event_log(path: Path | None) -> bytes | None:
    """The boot event log at `path` (None: not configured, or unreadable: logged)."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        log.warning("cannot read the boot event log %s: %s", path, err)
        return None


@dataclass(frozen=True)
class Produced:
    spec: NodeAttestationSpec
    activation_failed: bool = False


def produce(
    tpm: TpmSession,
    claims: Claims,
    selection: PcrSelection,
    status: NodeAttestationStatus,
    previous: NodeAttestationSpec | None,
    quote_nonce: str | None,
    activate: bool,
    event_log: Callable[[], bytes | None] = lambda: None,
) -> Produced:
    """The evidence to publish: identity, claims, activation answer and (new or kept) quote."""
    identity = tpm.identity()
    activation: CredentialActivation | None = None
    failed = False
    enrollment = status.enrollment
    if activate and enrollment is not None and enrollment.credential_blob is not None:
        try:
            credential = tpm.activate(
                base64.b64decode(enrollment.credential_blob),
                base64.b64decode(enrollment.encrypted_secret or ""),
            )
            activation = CredentialActivation(credential=_b64(credential))
        except TpmError as err:
            # A challenge for another AK or EK (e.g. the verifier saw forged evidence): the
            # verifier re-challenges once it sees this node's real identity.
            log.warning("cannot answer the enrollment challenge: %s", err)
            failed = True
    elif previous is not None and previous.tpm is not None:
        activation = previous.tpm.activation
    quote: Quote | None = None
    if quote_nonce is not None:
        result = tpm.quote(selection, qualifying_data(bytes.fromhex(quote_nonce), claims))
        quote = Quote(
            nonce=quote_nonce,
            attest=_b64(result.attest),
            signature=_b64(result.signature),
            pcr_bank=PcrBank(selection.bank),
            pcrs=[PcrValue(index=i, value=v.hex()) for i, v in sorted(result.pcrs.items())],
            event_log=_encoded(event_log()),
        )
    elif previous is not None and previous.tpm is not None:
        quote = previous.tpm.quote
    return Produced(
        spec=NodeAttestationSpec(
            tpm=TpmEvidence(
                ek_certificate=_b64(identity.ek_certificate),
                ek_public=_b64(identity.ek_public),
                ak_public=_b64(identity.ak_public),
                activation=activation,
                quote=quote,
            ),
            # A kept quote must stay next to the claims it was made over.
            claims=claims if quote_nonce is not None or previous is None else previous.claims,
            agent=AgentInfo(version=__version__, produced_time=datetime.now(UTC)),
        ),
        activation_failed=failed,
    )
