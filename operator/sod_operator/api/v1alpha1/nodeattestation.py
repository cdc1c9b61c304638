"""`NodeAttestation`: evidence of one node (spec, by its agent) and the verdict (status).

Cluster-scoped; the object's name is the node's name. The node-agent writes `spec` (and only
its own node's object: a ValidatingAdmissionPolicy compares the name with the node name bound
into the agent's token). The verifier alone writes `status` through the `/status`
subresource: the enrollment (EK certificate, AK bound by credential activation), one verdict
per `ServerSecurityProfile` and conditions. Nonces are not per node: the verifier publishes one
fleet-wide list of recent challenges in a ConfigMap (`CHALLENGES_CONFIGMAP`, `ChallengeList`),
so a round costs the API server the agent's evidence write and, only when something changed or
a verdict's expiry needs renewing, a status write (see `sod_operator.attestation.monitor`).

The wire protocol between agent and verifier is defined here, once, so neither side imports
the other: `qualifying_data(nonce, claims)` is what the agent passes to TPM2_Quote as
`qualifyingData` and what the verifier expects in the quote's `extraData`. That binds the
non-TPM claims (architecture, CPU flags, counters) to the TPM-signed, nonce-fresh quote.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import Field

from sod_operator.api.v1alpha1.attestation_policy import (
    CounterValue,
    FactName,
    HexDigest,
    ModuleParameterName,
    ModuleParameterValue,
    PcrBank,
    PcrIndex,
)
from sod_operator.api.v1alpha1.base import (
    CONDITIONS_LIST,
    UNIQUE_SET,
    ApiModel,
    Condition,
    DNS1123Name,
    Generation,
    Reason,
    ShortText,
    unique_map,
)

MAX_EVENT_LOG_BASE64: Final = 512 * 1024
"""Bound of `spec.tpm.quote.eventLog` (384 KiB of gzip). Real logs are 15-75 KiB; their
digests do not compress, so base64 of gzip is about 85% of the log: the object (and its etcd
write, at most 1.5 MiB) stays well inside the limits, whatever the firmware."""
NONCE_BYTES: Final = 32
"""Size of a verifier nonce (TPM2B_DATA holds at most 64 bytes)."""
QUALIFYING_DATA_DOMAIN: Final = b"sod.dev/v1alpha1 NodeAttestation quote\x00"
"""Domain separation for `qualifying_data`: a quote made for another protocol never matches."""

Base64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
NonceHex = Annotated[
    str, Field(min_length=2 * NONCE_BYTES, max_length=2 * NONCE_BYTES, pattern=r"^[0-9a-f]+$")
]
Sha256Hex = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")]
TpmNameHex = Annotated[str, Field(min_length=4, max_length=132, pattern=r"^([0-9a-f]{2})+$")]
VerdictMessage = Annotated[str, Field(max_length=4096)]


ATOMIC: Final[dict[str, Any]] = {"x-kubernetes-list-type": "atomic"}
"""Every list of a NodeAttestation but its conditions is atomic, its keys unique by a validator
(`unique_map`, `UNIQUE_SET`: the verifier refuses an object with duplicates as malformed).
With list-type map/set, each module parameter, PCR and verdict is a managedFields entry the
apiserver tracks on every write, and every round writes the object twice (issue 17 item 3;
bench/attestation.py times one write by object shape). Each list has one writer that replaces
it whole, so no merge by key is lost."""


# --------------------------------------------------------------------------- spec (evidence)


class ArchitectureSource(StrEnum):
    """Where the node-agent's architecture claim comes from."""

    SIMULATED = "Simulated"
    """A simulated-architecture source (tests, demos; the paper's prototype did the same)."""
    CONFIGURED = "Configured"
    """Declared by the node's configuration (e.g. a DaemonSet argument)."""


class ModuleParameter(ApiModel):
    """A kernel module parameter as found under /sys/module/<module>/parameters/."""

    name: ModuleParameterName
    """`<module>.<parameter>`, e.g. `kvm_amd.sev_snp`."""
    value: ModuleParameterValue
    """The parameter's value, trimmed."""


class RuntimeCounter(ApiModel):
    """A runtime trust-evidence counter (e.g. HyperWall's memory-violation count)."""

    name: FactName
    """The counter's name, e.g. `memoryViolations`."""
    value: CounterValue
    """The counter's current value."""


class Claims(ApiModel):
    """Facts the node reports besides the TPM quote. They are bound to the quote: the quote's
    `extraData` must equal `qualifying_data(nonce, claims)`, so they cannot be changed after
    the TPM signed them."""

    architecture: FactName | None = None
    """The security architecture the node declares (e.g. `hyperwall`)."""
    architecture_source: ArchitectureSource | None = None
    """Where the architecture claim comes from."""
    cpu_flags: Annotated[list[FactName], Field(max_length=512)] = []
    """CPU flags from /proc/cpuinfo (sorted, unique), plus any the simulated source adds."""
    module_parameters: Annotated[
        list[ModuleParameter], Field(max_length=256, json_schema_extra=ATOMIC), unique_map("name")
    ] = []
    """Parameters of the kvm modules (kvm, kvm_amd, kvm_intel)."""
    counters: Annotated[
        list[RuntimeCounter], Field(max_length=32, json_schema_extra=ATOMIC), unique_map("name")
    ] = []
    """Runtime trust-evidence counters."""


class PcrValue(ApiModel):
    """One PCR value as the node read it."""

    index: PcrIndex
    """The PCR index."""
    value: HexDigest
    """The PCR value, lower-case hex."""


class Quote(ApiModel):
    """A TPM2_Quote over the node's PCRs, answering the verifier's nonce."""

    nonce: NonceHex
    """The verifier's nonce (one of the published `ChallengeList`) this quote answers."""
    attest: Annotated[Base64, Field(max_length=4096)]
    """The signed TPMS_ATTEST structure, base64."""
    signature: Annotated[Base64, Field(max_length=2048)]
    """The TPMT_SIGNATURE over `attest` by the attestation key, base64."""
    pcr_bank: PcrBank
    """The PCR bank that was quoted."""
    pcrs: Annotated[
        list[PcrValue], Field(max_length=24, json_schema_extra=ATOMIC), unique_map("index")
    ]
    """The values of every quoted PCR; the verifier recomputes the quote's PCR digest."""
    event_log: Annotated[Base64, Field(max_length=MAX_EVENT_LOG_BASE64)] | None = None
    """The boot event log (binary TCG format, as in
    /sys/kernel/security/tpm0/binary_bios_measurements), gzip-compressed, base64. Unsigned:
    the verifier trusts it only as far as its replay reproduces the quoted PCRs."""


class CredentialActivation(ApiModel):
    """The node's answer to the enrollment challenge (TPM2_ActivateCredential)."""

    credential: Annotated[Base64, Field(max_length=256)]
    """The credential the TPM recovered from `status.enrollment.credentialBlob`, base64."""


class TpmEvidence(ApiModel):
    """What the node's TPM says about itself."""

    ek_certificate: Annotated[Base64, Field(max_length=8192)]
    """The endorsement key certificate (DER, base64) from the TPM's NV index."""
    ek_public: Annotated[Base64, Field(max_length=2048)]
    """The endorsement key's TPM2B_PUBLIC, base64."""
    ak_public: Annotated[Base64, Field(max_length=2048)]
    """The attestation key's TPM2B_PUBLIC, base64 (a restricted signing key)."""
    activation: CredentialActivation | None = None
    """The answer to the enrollment challenge, once the verifier issued one."""
    quote: Quote | None = None
    """The latest quote, once the verifier issued a nonce."""


class AgentInfo(ApiModel):
    """About the agent that wrote the evidence (informational; never trusted)."""

    version: ShortText = ""
    """The node-agent's version."""
    produced_time: datetime | None = None
    """When the agent produced this evidence, by the node's own clock."""


class NodeAttestationSpec(ApiModel):
    """Evidence written by the node's agent."""

    tpm: TpmEvidence | None = None
    """TPM evidence. A node without it is never verified for any profile."""
    claims: Claims = Claims()
    """Facts bound to the quote: architecture, CPU flags, module parameters, counters."""
    agent: AgentInfo | None = None
    """About the agent."""


# --------------------------------------------------------------------------- status (verdict)


class AttestationConditionType(StrEnum):
    READY = "Ready"
    """The node's latest evidence is valid and fresh (whatever profiles it proves)."""
    ENROLLED = "Enrolled"
    """The node's attestation key is bound to an EK whose certificate the verifier trusts."""


class AttestationReason(StrEnum):
    """Why a node or a profile on it is (not) verified. Persisted on the wire: never rename."""

    # Success
    VERIFIED = "Verified"
    ENROLLED = "Enrolled"
    # Missing or unusable input
    NO_EVIDENCE = "NoEvidence"
    MALFORMED_EVIDENCE = "MalformedEvidence"
    NO_QUOTE = "NoQuote"
    NODE_NOT_FOUND = "NodeNotFound"
    # Enrollment (EK certificate, credential activation)
    EK_CERTIFICATE_UNTRUSTED = "EkCertificateUntrusted"
    EK_PUBLIC_MISMATCH = "EkPublicMismatch"
    EK_UNSUPPORTED = "EkUnsupported"
    EK_ALREADY_ENROLLED = "EkAlreadyEnrolled"
    EK_CHANGED = "EkChanged"
    AK_ATTRIBUTES_INVALID = "AkAttributesInvalid"
    AWAITING_ACTIVATION = "AwaitingCredentialActivation"
    ACTIVATION_FAILED = "CredentialActivationFailed"
    AK_NOT_ENROLLED = "AkNotEnrolled"
    # Quote
    NONCE_MISMATCH = "NonceMismatch"
    QUOTE_MALFORMED = "QuoteMalformed"
    QUOTE_SIGNATURE_INVALID = "QuoteSignatureInvalid"
    QUALIFYING_DATA_MISMATCH = "QualifyingDataMismatch"
    PCR_SELECTION_MISMATCH = "PcrSelectionMismatch"
    PCR_DIGEST_MISMATCH = "PcrDigestMismatch"
    QUOTE_REPLAYED = "QuoteReplayed"
    EVIDENCE_STALE = "EvidenceStale"
    # Profile policy
    NO_ATTESTATION_POLICY = "NoAttestationPolicy"
    ARCHITECTURE_MISMATCH = "ArchitectureMismatch"
    ARCHITECTURE_NOT_ENROLLED = "ArchitectureNotEnrolled"
    PCR_BANK_MISMATCH = "PcrBankMismatch"
    PCR_NOT_QUOTED = "PcrNotQuoted"
    PCR_VALUE_MISMATCH = "PcrValueMismatch"
    CPU_FLAG_MISSING = "CpuFlagMissing"
    MODULE_PARAMETER_MISMATCH = "ModuleParameterMismatch"
    RUNTIME_COUNTER_MISSING = "RuntimeCounterMissing"
    RUNTIME_THRESHOLD_EXCEEDED = "RuntimeThresholdExceeded"
    # Measured boot (the boot event log against the profile's reference state)
    EVENT_LOG_MISSING = "EventLogMissing"
    EVENT_LOG_MALFORMED = "EventLogMalformed"
    EVENT_LOG_MISMATCH = "EventLogMismatch"
    EVENT_NOT_ALLOWED = "EventNotAllowed"
    SECURE_BOOT_DISABLED = "SecureBootDisabled"


class Challenge(ApiModel):
    """A nonce the verifier issued; the next quote must answer it."""

    nonce: NonceHex
    """32 random bytes, lower-case hex."""
    issued_time: datetime
    """When the verifier issued the nonce: no quote answering it can be older."""


MAX_CHALLENGES: Final = 64
"""Bound of the published list: evidence answering an older nonce is refused (`NonceMismatch`)."""
CHALLENGES_SUFFIX: Final = "-attestation-challenges"
CHALLENGES_CONFIGMAP: Final = f"sod{CHALLENGES_SUFFIX}"
"""The ConfigMap (in the verifier's namespace) the verifier publishes the challenges in, by
default (the chart names it `<release fullname>-attestation-challenges`); the agents may only
read it, and only the verifier may update it (`sod_operator.verifier.rbac`)."""
TRUST_NAMESPACE: Final = "sod-system"
"""The verifier's namespace by default (its Lease, the challenges ConfigMap)."""
CHALLENGES_KEY: Final = "challenges.json"
"""The ConfigMap's data key: the JSON of a `ChallengeList`."""


class ChallengeList(ApiModel):
    """The nonces a quote may answer, newest first: the verifier issues one every round (its
    `--challenge-interval`) and keeps each while evidence answering it could still be fresh
    for some profile. An agent answers the newest; the verifier accepts any listed nonce and
    measures the evidence's age from that nonce's `issuedTime`."""

    challenges: Annotated[list[Challenge], Field(max_length=MAX_CHALLENGES)] = []

    @property
    def newest(self) -> Challenge | None:
        return self.challenges[0] if self.challenges else None

    def find(self, nonce: str) -> Challenge | None:
        return next((c for c in self.challenges if c.nonce == nonce), None)


RENEWALS_SUFFIX: Final = "-attestation-renewals"
RENEWALS_CONFIGMAP: Final = f"sod{RENEWALS_SUFFIX}"
"""The ConfigMap (in the verifier's namespace) holding the fleet's expiry renewals, by default
(the chart names it `<release fullname>-attestation-renewals`); only the verifier may update
it, the operator may only read it, the agents cannot see it (`sod_operator.verifier.rbac`)."""
RENEWALS_KEY: Final = "renewals.json"
"""The ConfigMap's data key: the JSON of a `RenewalList`."""


class Renewal(ApiModel):
    """A node's verified verdicts renewed without a status write: evidence that says what the
    recorded one says (`contentSha256` equal to `status.evidence.contentSha256`) answered the
    nonce issued at `evidenceTime`, and the verifier judged it as it judged the recorded one
    (a different judgement is a status write, never a renewal)."""

    evidence_time: datetime
    """The renewing evidence's age is measured from this (its nonce's `issuedTime`)."""
    content_sha256: Sha256Hex
    """The recorded evidence this renewal applies to; none other."""


class RenewalList(ApiModel):
    """Node name → its newest renewal: one object for the fleet, written by the verifier when
    some verdict has spent half its lifetime (instead of a status write per node)."""

    renewals: dict[str, Renewal] = {}


def renewed_expiry(
    expiry: datetime,
    evidence_time: datetime | None,
    record_content_sha256: str | None,
    renewal: Renewal | None,
) -> datetime:
    """A `Verified` verdict's expiry, moved later by a renewal of the same recorded evidence.

    A verdict expires `freshnessSeconds` after its evidence (`verify`), so evidence saying the
    same, judged the same and fresh from a later nonce, moves the expiry by exactly as much.
    A renewal of other evidence, or not later than the verdict's, changes nothing."""
    if (
        renewal is None
        or evidence_time is None
        or record_content_sha256 is None
        or renewal.content_sha256 != record_content_sha256
        or renewal.evidence_time <= evidence_time
    ):
        return expiry
    return expiry + (renewal.evidence_time - evidence_time)


MAX_TPM_CLOCK: Final = 2**53 - 1
"""The largest TPM clock recorded exactly (a JSON number); a larger one is recorded as this."""


class TpmClock(ApiModel):
    """The TPM's clock in a quote (TPMS_CLOCK_INFO): strictly later in every newer quote of the
    same TPM, so an older quote re-sent is recognised even when it answers a listed nonce."""

    reset_count: Annotated[int, Field(ge=0, le=2**32 - 1)]
    restart_count: Annotated[int, Field(ge=0, le=2**32 - 1)]
    clock: Annotated[int, Field(ge=0, le=MAX_TPM_CLOCK)]
    """Milliseconds the TPM has been powered (TPMS_CLOCK_INFO.clock; bounded to what a JSON
    number holds exactly, some 285,000 years)."""

    def order(self) -> tuple[int, int, int]:
        return (self.reset_count, self.restart_count, self.clock)


class EnrollmentState(StrEnum):
    CHALLENGED = "Challenged"
    """A credential was made for the AK and encrypted to the EK; awaiting activation."""
    ENROLLED = "Enrolled"
    """The node proved the AK lives in the TPM that owns the certified EK."""


class Enrollment(ApiModel):
    """The binding of the node's attestation key to its endorsement key."""

    state: EnrollmentState
    """`Challenged` until the node answers, then `Enrolled`."""
    ek_certificate_sha256: Sha256Hex
    """SHA-256 of the enrolled EK certificate (DER)."""
    ak_name: TpmNameHex
    """The TPM Name (hash algorithm + digest) of the enrolled attestation key."""
    credential_blob: Annotated[Base64, Field(max_length=1024)] | None = None
    """TPM2B_ID_OBJECT contents for TPM2_ActivateCredential (while `Challenged`)."""
    encrypted_secret: Annotated[Base64, Field(max_length=1024)] | None = None
    """TPM2B_ENCRYPTED_SECRET contents for TPM2_ActivateCredential (while `Challenged`)."""
    credential_sha256: Sha256Hex | None = None
    """SHA-256 of the credential: the verifier keeps no secret, only this (while `Challenged`)."""
    challenged_time: datetime
    """When the challenge was issued."""
    enrolled_time: datetime | None = None
    """When the node answered the challenge correctly."""


class EvidenceRecord(ApiModel):
    """What the verifier recorded when a new generation of evidence arrived."""

    observed_generation: Generation
    """The `metadata.generation` of the evidence."""
    challenge: Challenge | None = None
    """The published challenge the quote answers: the evidence's age is measured from its
    `issuedTime`."""
    received_time: datetime
    """When the verifier recorded this generation."""
    quote_sha256: Sha256Hex | None = None
    """SHA-256 over the quote's nonce, attest and signature: a spec change that keeps the same
    quote is not new evidence."""
    content_sha256: Sha256Hex | None = None
    """SHA-256 over what the evidence says (claims, PCR bank and digest, event log): a round
    that says the same as the recorded one changes no verdict and is not written."""
    tpm_clock: TpmClock | None = None
    """The recorded quote's TPM clock: a quote with an earlier one is refused
    (`QuoteReplayed`)."""


class VerdictResult(StrEnum):
    VERIFIED = "Verified"
    REJECTED = "Rejected"


class ProfileVerdict(ApiModel):
    """Whether the node's evidence proves one `ServerSecurityProfile`."""

    profile: DNS1123Name
    """The profile's name."""
    result: VerdictResult
    """`Verified` (the node carries the profile's label) or `Rejected`."""
    reason: Reason
    """A CamelCase reason (see `AttestationReason`)."""
    message: VerdictMessage = ""
    """Every check that failed, human-readable."""
    last_transition_time: datetime
    """When `result` last changed."""
    evidence_time: datetime | None = None
    """When the nonce the evidence answers was issued (a lower bound on the quote's time)."""
    expiry_time: datetime | None = None
    """When a `Verified` result expires unless fresher evidence arrives."""


class NodeAttestationStatus(ApiModel):
    """The verifier's challenge, enrollment and verdict."""

    observed_generation: Generation | None = None
    """The generation of the evidence this status was last written for (a round that changes
    nothing is not written: `monitor.must_write`)."""
    enrollment: Enrollment | None = None
    """The AK↔EK binding."""
    evidence: EvidenceRecord | None = None
    """What the verifier recorded about the latest evidence."""
    verdicts: Annotated[
        list[ProfileVerdict], Field(max_length=256, json_schema_extra=ATOMIC), unique_map("profile")
    ] = []
    """One verdict per ServerSecurityProfile."""
    verified_profiles: Annotated[
        list[DNS1123Name], Field(max_length=256, json_schema_extra=ATOMIC), UNIQUE_SET
    ] = []
    """Profiles verified on the node (sorted): the node carries their labels."""
    conditions: (
        Annotated[list[Condition], Field(max_length=16, json_schema_extra=CONDITIONS_LIST)] | None
    ) = None
    """`Ready` and `Enrolled`."""


class NodeAttestation(ApiModel):
    """A whole `NodeAttestation` object as read from the apiserver."""

    name: DNS1123Name
    """`metadata.name`: the node's name."""
    generation: Generation = 0
    """`metadata.generation`: bumped by the apiserver on every spec change."""
    resource_version: Annotated[str, Field(max_length=64)] = ""
    """`metadata.resourceVersion`, for optimistic concurrency."""
    spec: NodeAttestationSpec = NodeAttestationSpec()
    status: NodeAttestationStatus = NodeAttestationStatus()

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> NodeAttestation:
        """Parse a `NodeAttestation` dict (as the Kubernetes API returns it)."""
        meta = obj.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            generation=meta.get("generation") or 0,
            resource_version=meta.get("resourceVersion") or "",
            spec=NodeAttestationSpec.model_validate(obj.get("spec") or {}),
            status=NodeAttestationStatus.model_validate(obj.get("status") or {}),
        )


# --------------------------------------------------------------------------- wire protocol


def claims_digest(claims: Claims) -> bytes:
    """SHA-256 of the canonical JSON of `claims` (sorted keys, no whitespace, camelCase)."""
    canonical = json.dumps(
        claims.model_dump(mode="json", by_alias=True, exclude_none=True),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).digest()


def qualifying_data(nonce: bytes, claims: Claims) -> bytes:
    """The `qualifyingData` of TPM2_Quote: binds the verifier's nonce and the claims (32 bytes)."""
    return hashlib.sha256(QUALIFYING_DATA_DOMAIN + nonce + claims_digest(claims)).digest()


def encode_event_log(raw: bytes) -> str:
    """`spec.tpm.quote.eventLog` of a binary TCG event log: base64 of gzip (mtime 0, so the
    same log always encodes the same). The verifier decodes it with a bound on the inflated
    size (`sod_operator.attestation.measuredboot.decode`)."""
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode()
