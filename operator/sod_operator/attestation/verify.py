"""Verification of a node's evidence: identity, quote, and each profile's attestation policy.

Pure: value objects in, value objects out, `now` passed in. Three stages, each returning
either a result or a `Failure` (Keylime's `Failure` style: findings with a stable CamelCase
reason and a message; `recoverable=False` when validation stopped early):

1. `check_identity` — the EK certificate chains to the CA bundle at `now`, the EK public key
   is the certified one and can receive a credential, the AK is a restricted TPM-resident
   signing key. (`enroll.py` then binds the AK to the EK by credential activation.)
2. `check_quote` — signed by the *enrolled* AK in its fixed scheme; a TPM-generated quote;
   it answers the nonce that was current when the evidence arrived; its `extraData` binds
   that nonce and the claims; the reported PCRs are exactly the quoted selection and hash to
   the quote's PCR digest.
3. `evaluate_profile` — freshness (age measured from the nonce's issue time), the
   architecture (declared by the node *and* its EK enrolled for it by the platform team,
   `platform`), PCR bank, required PCRs present and equal to golden values, the boot event
   log replayed against the quote and checked against the measured-boot reference state
   (`measuredboot`), CPU flags, module parameters, runtime counter thresholds. All failed
   checks are reported together.

`verify` runs all three for every profile. Trust is never derived from the node's own clock,
labels or status: only from the TPM signature, the verifier's nonce and the verifier's `now`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy, PcrBank
from sod_operator.api.v1alpha1.nodeattestation import (
    MAX_TPM_CLOCK,
    AttestationReason,
    Challenge,
    Claims,
    Enrollment,
    EnrollmentState,
    NodeAttestationSpec,
    TpmClock,
    TpmEvidence,
    qualifying_data,
)
from sod_operator.attestation import ekcert, measuredboot, platform, tpm
from sod_operator.attestation.ekcert import CaBundle
from sod_operator.attestation.eventlog import EventLog, EventLogError

R = AttestationReason

BANK_ALG: dict[PcrBank, int] = {
    PcrBank.SHA256: tpm.Alg.SHA256,
    PcrBank.SHA384: tpm.Alg.SHA384,
    PcrBank.SHA512: tpm.Alg.SHA512,
}
MESSAGE_LIMIT = 4000


@dataclass(frozen=True)
class Finding:
    """One failed check."""

    reason: AttestationReason
    message: str


@dataclass(frozen=True)
class Failure:
    """Every finding that makes evidence (or a profile on it) unverified.

    `recoverable=False`: validation stopped at the first finding because nothing after it can
    be trusted (e.g. a bad signature); `True`: all checks ran and each finding is listed.
    """

    findings: tuple[Finding, ...]
    recoverable: bool = True

    @classmethod
    def of(cls, reason: AttestationReason, message: str, recoverable: bool = False) -> Failure:
        return cls((Finding(reason, message),), recoverable)

    @property
    def reason(self) -> AttestationReason:
        return self.findings[0].reason

    @property
    def message(self) -> str:
        text = "; ".join(f.message for f in self.findings)
        return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _Malformed(f"{field}: not base64: {err}") from err


class _Malformed(Exception):
    pass


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """A node's TPM identity after the certificate and key checks."""

    ek: tpm.PublicArea
    ak: tpm.PublicArea
    ek_certificate: x509.Certificate
    ek_certificate_sha256: str

    @property
    def ak_name(self) -> str:
        return self.ak.name.hex()


def check_identity(evidence: TpmEvidence, bundle: CaBundle, now: datetime) -> Identity | Failure:
    """The EK certificate chains to `bundle` at `now`, matches the EK, and the AK is sound."""
    try:
        cert_der = _b64(evidence.ek_certificate, "spec.tpm.ekCertificate")
        ek_bytes = _b64(evidence.ek_public, "spec.tpm.ekPublic")
        ak_bytes = _b64(evidence.ak_public, "spec.tpm.akPublic")
    except _Malformed as err:
        return Failure.of(R.MALFORMED_EVIDENCE, str(err))
    try:
        cert = ekcert.parse_certificate(cert_der)
    except ValueError as err:
        return Failure.of(R.MALFORMED_EVIDENCE, f"spec.tpm.ekCertificate: {err}")
    problem = ekcert.chain_problem(cert, bundle, now)
    if problem is not None:
        return Failure.of(R.EK_CERTIFICATE_UNTRUSTED, f"EK certificate is not trusted: {problem}")
    try:
        ek = tpm.parse_tpm2b_public(ek_bytes, "spec.tpm.ekPublic")
        ak = tpm.parse_tpm2b_public(ak_bytes, "spec.tpm.akPublic")
    except tpm.TpmFormatError as err:
        return Failure.of(R.MALFORMED_EVIDENCE, str(err))
    mismatch = ekcert.key_mismatch(cert, ek.public_key)
    if mismatch is not None:
        return Failure.of(
            R.EK_PUBLIC_MISMATCH,
            f"spec.tpm.ekPublic is not the key certified by spec.tpm.ekCertificate: {mismatch}",
        )
    problem = tpm.ek_problem(ek)
    if problem is not None:
        return Failure.of(R.EK_UNSUPPORTED, f"endorsement key unsupported: {problem}")
    problem = tpm.ak_problem(ak)
    if problem is not None:
        return Failure.of(
            R.AK_ATTRIBUTES_INVALID,
            f"attestation key is not a restricted TPM-resident signing key: {problem}",
        )
    return Identity(
        ek=ek, ak=ak, ek_certificate=cert, ek_certificate_sha256=ekcert.fingerprint(cert_der)
    )


def check_enrolled(identity: Identity, enrollment: Enrollment | None) -> Failure | None:
    """Whether `identity` is the enrolled one (None: it is)."""
    if enrollment is None or enrollment.state != EnrollmentState.ENROLLED:
        return Failure.of(R.AWAITING_ACTIVATION, "the node is not enrolled yet", recoverable=True)
    if identity.ek_certificate_sha256 != enrollment.ek_certificate_sha256:
        return Failure.of(
            R.EK_CHANGED,
            f"the node presents EK certificate sha256:{identity.ek_certificate_sha256[:16]}… but "
            f"enrolled sha256:{enrollment.ek_certificate_sha256[:16]}…; after a TPM replacement "
            "delete the NodeAttestation so the node enrolls again",
        )
    if identity.ak_name != enrollment.ak_name:
        return Failure.of(
            R.AK_NOT_ENROLLED,
            f"the quote's attestation key {identity.ak_name[:20]}… is not the enrolled AK "
            f"{enrollment.ak_name[:20]}… (bound to the EK by credential activation)",
        )
    return None


# --------------------------------------------------------------------------- quote


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signature, nonce, binding and PCR digest all checked out."""

    bank: PcrBank
    pcrs: Mapping[int, bytes]
    claims: Claims
    challenge: Challenge
    info: tpm.QuoteInfo
    event_log: EventLog | str | None = None
    """The boot event log sent with the quote (str: why it is unusable; None: none sent).
    Not yet checked against the quote: `measuredboot.evaluate` does that per profile."""
    ek_sha256: str | None = None
    """The enrolled EK's fingerprint (`platform.ek_fingerprint`), set by `check_evidence`:
    what the platform team's PlatformEnrollments are looked up by. None: unknown."""

    @property
    def evidence_time(self) -> datetime:
        """The quote cannot be older than the nonce it answers."""
        return self.challenge.issued_time


def check_quote(
    evidence: TpmEvidence,
    claims: Claims,
    ak: tpm.PublicArea,
    challenge: Challenge | None,
    not_before: TpmClock | None = None,
) -> VerifiedQuote | Failure:
    """Verify `evidence.quote` was signed by `ak` over `challenge`'s nonce and the claims, and
    (with `not_before`, the recorded quote's TPM clock) that it is not older than that quote."""
    quote = evidence.quote
    if quote is None:
        return Failure.of(R.NO_QUOTE, "the node has not sent a quote yet", recoverable=True)
    if challenge is None:
        return Failure.of(R.NONCE_MISMATCH, "no nonce was current when this evidence arrived")
    if not hmac.compare_digest(quote.nonce, challenge.nonce):
        return Failure.of(
            R.NONCE_MISMATCH,
            f"the quote answers nonce {quote.nonce[:16]}…, which the verifier has not published "
            f"or no longer lists (the newest is {challenge.nonce[:16]}…, issued "
            f"{challenge.issued_time.isoformat()}): a forged or outdated quote",
        )
    try:
        attest = _b64(quote.attest, "spec.tpm.quote.attest")
        sig_bytes = _b64(quote.signature, "spec.tpm.quote.signature")
    except _Malformed as err:
        return Failure.of(R.MALFORMED_EVIDENCE, str(err))
    try:
        signature = tpm.parse_signature(sig_bytes)
    except tpm.TpmFormatError as err:
        return Failure.of(R.QUOTE_MALFORMED, f"spec.tpm.quote.signature: {err}")
    problem = tpm.signature_problem(ak, signature, attest)
    if problem is not None:
        return Failure.of(R.QUOTE_SIGNATURE_INVALID, f"quote signature is invalid: {problem}")
    try:
        info = tpm.parse_quote(attest)
    except tpm.TpmFormatError as err:
        return Failure.of(R.QUOTE_MALFORMED, f"spec.tpm.quote.attest: {err}")
    if not_before is not None and _clock(info) < not_before.order():
        return Failure.of(
            R.QUOTE_REPLAYED,
            f"the quote's TPM clock {_clock(info)} (reset, restart, ms) is earlier than the "
            f"recorded evidence's {not_before.order()}: an older quote sent again",
        )
    expected = qualifying_data(bytes.fromhex(challenge.nonce), claims)
    if not hmac.compare_digest(info.extra_data, expected):
        return Failure.of(
            R.QUALIFYING_DATA_MISMATCH,
            "the quote's extraData is not H(nonce ‖ claims): it was made for another nonce, "
            "or spec.claims was changed after the TPM signed the quote",
        )
    bank_alg = BANK_ALG[quote.pcr_bank]
    quoted = [s for s in info.pcr_select if s.indices]
    if len(quoted) != 1 or quoted[0].hash_alg != bank_alg:
        banks = ", ".join(f"0x{s.hash_alg:04x}:{list(s.indices)}" for s in quoted) or "none"
        return Failure.of(
            R.PCR_SELECTION_MISMATCH,
            f"the quote covers PCR banks [{banks}], not exactly the reported {quote.pcr_bank}",
        )
    reported = sorted(p.index for p in quote.pcrs)
    if reported != list(quoted[0].indices):
        return Failure.of(
            R.PCR_SELECTION_MISMATCH,
            f"reported PCRs {reported} differ from the quoted selection {list(quoted[0].indices)}",
        )
    values = {p.index: bytes.fromhex(p.value) for p in quote.pcrs}
    size = tpm.digest_size(bank_alg)
    wrong = [i for i, v in values.items() if len(v) != size]
    if wrong:
        return Failure.of(
            R.MALFORMED_EVIDENCE, f"spec.tpm.quote.pcrs: PCRs {wrong} are not {size}-byte digests"
        )
    scheme_hash = ak.scheme_hash if ak.scheme_hash is not None else tpm.Alg.SHA256
    recomputed = tpm.pcr_digest(scheme_hash, [values[i] for i in quoted[0].indices])
    if not hmac.compare_digest(recomputed, info.pcr_digest):
        return Failure.of(
            R.PCR_DIGEST_MISMATCH,
            "the reported PCR values do not hash to the quote's PCR digest: "
            "they were changed after the TPM signed the quote",
        )
    return VerifiedQuote(
        bank=quote.pcr_bank,
        pcrs=values,
        claims=claims,
        challenge=challenge,
        info=info,
        event_log=_event_log(quote.event_log),
    )


def _clock(info: tpm.QuoteInfo) -> tuple[int, int, int]:
    return (info.reset_count, info.restart_count, info.clock)


def tpm_clock(info: tpm.QuoteInfo) -> TpmClock:
    """The quote's TPMS_CLOCK_INFO as recorded in `status.evidence.tpmClock`."""
    return TpmClock(
        reset_count=info.reset_count,
        restart_count=info.restart_count,
        clock=min(info.clock, MAX_TPM_CLOCK),
    )


def _event_log(encoded: str | None) -> EventLog | str | None:
    """Parsed once per quote; a bad log only fails profiles with a measured-boot policy."""
    if encoded is None:
        return None
    try:
        return measuredboot.decode(encoded)
    except EventLogError as err:
        return str(err)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Decision:
    """The verdict for one profile on one node."""

    profile: str
    verified: bool
    reason: AttestationReason
    message: str
    evidence_time: datetime | None = None
    expiry_time: datetime | None = None
    """When a verified decision stops holding (the verifier re-evaluates then)."""


def evaluate_profile(
    name: str,
    policy: AttestationPolicy | None,
    evidence: VerifiedQuote | Failure,
    now: datetime,
    enrollments: platform.Enrollments | None = None,
) -> Decision:
    """Whether verified `evidence` proves profile `name` under `policy` at `now`."""
    if policy is None:
        return Decision(
            name,
            False,
            R.NO_ATTESTATION_POLICY,
            f"profile {name!r} has no spec.attestation, so no node can prove it",
        )
    if isinstance(evidence, Failure):
        return Decision(name, False, evidence.reason, evidence.message)
    evidence_time = evidence.evidence_time
    expiry = evidence_time + timedelta(seconds=policy.freshness_seconds)
    if now >= expiry:
        age = (now - evidence_time).total_seconds()
        return Decision(
            name,
            False,
            R.EVIDENCE_STALE,
            f"evidence is {age:.0f}s old (nonce issued {evidence_time.isoformat()}), more than "
            f"the profile's freshnessSeconds={policy.freshness_seconds}: the agent is silent "
            "or its quotes are rejected",
            evidence_time,
        )
    findings = _policy_findings(policy, evidence, enrollments or {})
    if findings:
        failure = Failure(tuple(findings))
        return Decision(name, False, failure.reason, failure.message, evidence_time)
    return Decision(
        name,
        True,
        R.VERIFIED,
        f"verified: quote by the enrolled AK over the current nonce meets profile {name!r}",
        evidence_time,
        expiry,
    )


def _policy_findings(
    policy: AttestationPolicy, evidence: VerifiedQuote, enrollments: platform.Enrollments
) -> list[Finding]:
    claims = evidence.claims
    out: list[Finding] = []
    if policy.architecture is not None:
        found = platform.architecture_finding(
            policy.architecture, claims.architecture, evidence.ek_sha256, enrollments
        )
        if found is not None:
            out.append(Finding(*found))
    if policy.tpm is not None:
        if policy.tpm.pcr_bank != evidence.bank:
            out.append(
                Finding(
                    R.PCR_BANK_MISMATCH,
                    f"PCR bank {policy.tpm.pcr_bank} required, the quote is over {evidence.bank}",
                )
            )
        else:
            for golden in policy.tpm.pcrs:
                value = evidence.pcrs.get(golden.index)
                if value is None:
                    out.append(
                        Finding(
                            R.PCR_NOT_QUOTED,
                            f"PCR {golden.index} is required but not covered by the quote "
                            f"(quoted: {sorted(evidence.pcrs)})",
                        )
                    )
                elif value.hex() not in golden.values:
                    out.append(
                        Finding(
                            R.PCR_VALUE_MISMATCH,
                            f"PCR {golden.index} is {value.hex()[:16]}…, not a golden value "
                            f"({', '.join(v[:16] + '…' for v in golden.values)}): "
                            "an unexpected measurement",
                        )
                    )
    if policy.measured_boot is not None:
        out.extend(
            Finding(reason, message)
            for reason, message in measuredboot.evaluate(
                policy.measured_boot, evidence.bank, evidence.pcrs, evidence.event_log
            )
        )
    flags = set(claims.cpu_flags)
    missing = [f for f in policy.cpu_flags if f not in flags]
    if missing:
        out.append(Finding(R.CPU_FLAG_MISSING, f"CPU flags {missing} required, not reported"))
    params = {p.name: p.value for p in claims.module_parameters}
    for req in policy.module_parameters:
        if params.get(req.name) != req.value:
            out.append(
                Finding(
                    R.MODULE_PARAMETER_MISMATCH,
                    f"module parameter {req.name}={req.value} required, the node reports "
                    f"{params.get(req.name)!r}",
                )
            )
    counters = {c.name: c.value for c in claims.counters}
    for limit in policy.runtime:
        count = counters.get(limit.counter)
        if count is None:
            out.append(
                Finding(
                    R.RUNTIME_COUNTER_MISSING,
                    f"runtime counter {limit.counter!r} required, not reported",
                )
            )
        elif count > limit.max:
            out.append(
                Finding(
                    R.RUNTIME_THRESHOLD_EXCEEDED,
                    f"runtime counter {limit.counter}={count} exceeds the maximum {limit.max}",
                )
            )
    return out


# --------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class Verification:
    """The evidence-level result and one decision per profile."""

    evidence: VerifiedQuote | Failure
    decisions: tuple[Decision, ...]

    @property
    def verified_profiles(self) -> list[str]:
        return sorted(d.profile for d in self.decisions if d.verified)


def check_evidence(
    spec: NodeAttestationSpec,
    enrollment: Enrollment | None,
    challenge: Challenge | None,
    bundle: CaBundle,
    now: datetime,
    *,
    identity: Identity | Failure | None = None,
    enrollment_failure: Failure | None = None,
    not_before: TpmClock | None = None,
) -> VerifiedQuote | Failure:
    """Stages 1 and 2: identity, enrollment and quote checks of `spec` (all but the profiles).

    The verifier passes what its enrollment step already found (`identity`, and the
    `enrollment_failure` that takes precedence while the node is not enrolled); the checks
    themselves are these, in this order, for tests and the verifier alike.
    """
    if spec.tpm is None:
        return Failure.of(R.NO_EVIDENCE, "spec.tpm is missing: the node sent no TPM evidence")
    if identity is None:
        identity = check_identity(spec.tpm, bundle, now)
    if isinstance(identity, Failure):
        return identity
    failure = enrollment_failure or check_enrolled(identity, enrollment)
    if failure is not None:
        return failure
    quote = check_quote(spec.tpm, spec.claims, identity.ak, challenge, not_before)
    if isinstance(quote, Failure):
        return quote
    return dataclasses.replace(quote, ek_sha256=platform.ek_fingerprint(identity.ek_certificate))


def verify(
    spec: NodeAttestationSpec,
    enrollment: Enrollment | None,
    challenge: Challenge | None,
    policies: Mapping[str, AttestationPolicy | None],
    bundle: CaBundle,
    now: datetime,
    *,
    identity: Identity | Failure | None = None,
    enrollment_failure: Failure | None = None,
    missing_node: str | None = None,
    enrollments: platform.Enrollments | None = None,
    not_before: TpmClock | None = None,
) -> Verification:
    """The verification pipeline: every stage, then every profile's attestation policy.

    `challenge` is the published nonce the quote answers (replay protection: a quote
    answering any other nonce is rejected, and with `not_before` one older than the recorded
    quote); `enrollment` is the node's AK↔EK binding.
    `monitor.step` runs exactly this function (with its enrollment results and, when there
    is no Node object to carry a verdict, `missing_node`): there is no second composition.
    `enrollments` are the platform team's PlatformEnrollments: a profile that names an
    architecture is verified only on a node whose EK is enrolled for it.
    """
    evidence = check_evidence(
        spec,
        enrollment,
        challenge,
        bundle,
        now,
        identity=identity,
        enrollment_failure=enrollment_failure,
        not_before=not_before,
    )
    if missing_node is not None and isinstance(evidence, VerifiedQuote):
        evidence = Failure.of(
            R.NODE_NOT_FOUND, f"there is no Node named {missing_node!r} to carry the verdict"
        )
    decisions = tuple(
        evaluate_profile(name, policy, evidence, now, enrollments)
        for name, policy in sorted(policies.items())
    )
    return Verification(evidence, decisions)
