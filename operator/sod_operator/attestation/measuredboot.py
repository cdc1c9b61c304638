"""Measured boot: a node's boot event log against a profile's reference state (pure).

`evaluate` first binds the log to the quote — its replay in the policy's bank must reproduce
the quoted value of every PCR the policy covers and of every other quoted PCR the log
extends; an unsigned log is worthless otherwise — then checks each event extended into the
policy's PCRs against the reference state, and Secure Boot if required. Every finding names
the offending event (number, PCR, type and what it measured).

`reference_state` is the inverse: known-good logs in, the `MeasuredBootPolicy` that accepts
exactly their events out (what `sodctl reference-state` prints).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping, Sequence

from sod_operator.api.v1alpha1.attestation_policy import (
    EventReference,
    MeasuredBootPolicy,
    PcrBank,
)
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason, encode_event_log
from sod_operator.attestation import eventlog
from sod_operator.attestation.eventlog import Event, EventLog, EventLogError

R = AttestationReason
BANK_NAMES: dict[PcrBank, str] = {
    PcrBank.SHA256: "sha256",
    PcrBank.SHA384: "sha384",
    PcrBank.SHA512: "sha512",
}
SECURE_BOOT_PCR = 7
MAX_EVENT_FINDINGS = 5
"""A wholly foreign boot chain yields one finding per event: report the first few."""

Finding = tuple[AttestationReason, str]


def decode(event_log: str) -> EventLog:
    """`spec.tpm.quote.eventLog` (base64 of gzip) → a parsed log, or `EventLogError`."""
    try:
        packed = base64.b64decode(event_log, validate=True)
    except (binascii.Error, ValueError) as err:
        raise EventLogError(f"not base64: {err}") from err
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip only
    try:
        raw = inflater.decompress(packed, eventlog.MAX_LOG_BYTES + 1)
    except zlib.error as err:
        raise EventLogError(f"not gzip: {err}") from err
    if len(raw) > eventlog.MAX_LOG_BYTES or inflater.unconsumed_tail:
        raise EventLogError(f"inflates to more than {eventlog.MAX_LOG_BYTES} bytes")
    if not inflater.eof:
        raise EventLogError("truncated gzip stream")
    return eventlog.parse(raw)


def encode(raw: bytes) -> str:
    """What the node-agent sends (defined with the wire protocol in the API)."""
    return encode_event_log(raw)


def evaluate(
    policy: MeasuredBootPolicy,
    quote_bank: PcrBank,
    quoted: Mapping[int, bytes],
    log: EventLog | str | None,
) -> list[Finding]:
    """Findings of `log` (None: not sent; str: why it is unusable) under `policy`; [] = pass."""
    if policy.pcr_bank != quote_bank:
        return [
            (
                R.PCR_BANK_MISMATCH,
                f"measured boot in {policy.pcr_bank} required, the quote is over {quote_bank}",
            )
        ]
    if log is None:
        return [
            (
                R.EVENT_LOG_MISSING,
                "the profile has a measured-boot policy, but the node "
                "sent no boot event log with its quote",
            )
        ]
    if isinstance(log, str):
        return [(R.EVENT_LOG_MALFORMED, f"the boot event log is unusable: {log}")]
    bank = BANK_NAMES[policy.pcr_bank]
    if bank not in log.banks:
        return [
            (
                R.EVENT_LOG_MISMATCH,
                f"the boot event log has no {bank} digests (its banks: {', '.join(log.banks)})",
            )
        ]
    covered = set(policy.pcrs) | ({SECURE_BOOT_PCR} if policy.require_secure_boot else set())
    unquoted = sorted(covered - set(quoted))
    if unquoted:
        return [
            (
                R.PCR_NOT_QUOTED,
                f"PCRs {unquoted} are covered by the measured-boot policy "
                f"but not by the quote (quoted: {sorted(quoted)})",
            )
        ]
    mismatch = _replay_findings(log, bank, quoted, covered)
    if mismatch:
        return mismatch  # nothing in a log that is not the quoted boot's can be believed
    out = _event_findings(policy, log, bank)
    if policy.require_secure_boot:
        out.extend(_secure_boot_findings(log))
    return out


def _replay_findings(
    log: EventLog, bank: str, quoted: Mapping[int, bytes], covered: set[int]
) -> list[Finding]:
    replayed = log.replay()[bank]
    out: list[Finding] = []
    for pcr in sorted(covered | (set(replayed) & set(quoted))):
        expected = replayed.get(pcr, log.reset_value(bank, pcr))
        if expected != quoted[pcr]:
            out.append(
                (
                    R.EVENT_LOG_MISMATCH,
                    f"the boot event log does not reproduce the quote: PCR {pcr} replays to "
                    f"{expected.hex()[:16]}… ({len(log.extending(pcr))} events), the TPM "
                    f"quoted {quoted[pcr].hex()[:16]}…: events were hidden, added or changed, "
                    "or the log is from another boot",
                )
            )
    return out


def _reference_key(ev: Event) -> tuple[int, str, str]:
    var = ev.variable
    return ev.pcr, ev.type_name, var.name if var is not None else ""


def _event_findings(policy: MeasuredBootPolicy, log: EventLog, bank: str) -> list[Finding]:
    refs = {(r.pcr, r.event_type, r.variable): r for r in policy.references}
    bad: list[str] = []
    for ev in log.events:
        if not ev.extends or ev.pcr not in policy.pcrs:
            continue
        pcr, etype, var = _reference_key(ev)
        ref = refs.get((pcr, etype, var)) or refs.get((pcr, etype, ""))
        digest = ev.digests[bank].hex()
        if ref is None:
            what = f"{etype} {var}".rstrip()
            bad.append(
                f"{ev.label()} is not in the reference state (no reference for PCR {pcr} "
                f"{what}; {bank}:{digest[:16]}…)"
            )
        elif digest not in ref.digests:
            bad.append(
                f"{ev.label()} has {bank} digest {digest[:16]}…, not one of the "
                f"{len(ref.digests)} the reference state allows"
            )
    if not bad:
        return []
    more = len(bad) - MAX_EVENT_FINDINGS
    shown = bad[:MAX_EVENT_FINDINGS] + ([f"and {more} more events"] if more > 0 else [])
    return [(R.EVENT_NOT_ALLOWED, "unexpected boot event: " + "; ".join(shown))]


def _secure_boot_findings(log: EventLog) -> list[Finding]:
    ev = eventlog.secure_boot_event(log)
    if ev is None:
        return [
            (
                R.SECURE_BOOT_DISABLED,
                "Secure Boot required, but the boot event log "
                "measures no SecureBoot variable into PCR 7",
            )
        ]
    bank = eventlog.measures_its_data(ev)
    if bank is not None:
        return [
            (
                R.SECURE_BOOT_DISABLED,
                f"Secure Boot required, but {ev.label()}'s data is "
                f"not what its {bank} digest measured",
            )
        ]
    var = ev.variable
    if var is None or var.data != b"\x01":
        value = var.data.hex() if var is not None else "?"
        return [
            (
                R.SECURE_BOOT_DISABLED,
                f"Secure Boot required, but {ev.label()} measured "
                f"SecureBoot={value or 'empty'}: Secure Boot is disabled",
            )
        ]
    return []


# --------------------------------------------------------------------------- reference state


class ReferenceStateError(ValueError):
    """The logs cannot make the requested reference state."""


def reference_state(
    logs: Sequence[EventLog],
    pcrs: Sequence[int],
    bank: PcrBank = PcrBank.SHA256,
    require_secure_boot: bool = False,
) -> MeasuredBootPolicy:
    """The policy accepting exactly the events of `logs` (known-good nodes) in `pcrs`.

    Several logs (e.g. the old and the new boot loader during a rollout) give the union of
    their digests. UEFI variable events get one reference per variable (so db and dbx are
    named); every other event type one reference per PCR and type.
    """
    name = BANK_NAMES[bank]
    digests: dict[tuple[int, str, str], list[str]] = {}
    for i, log in enumerate(logs):
        if name not in log.banks:
            raise ReferenceStateError(
                f"log {i + 1} has no {name} digests (its banks: {', '.join(log.banks)})"
            )
        if require_secure_boot:
            problems = _secure_boot_findings(log)
            if problems:
                raise ReferenceStateError(f"log {i + 1}: {problems[0][1]}")
        for ev in log.events:
            if ev.extends and ev.pcr in pcrs:
                seen = digests.setdefault(_reference_key(ev), [])
                if ev.digests[name].hex() not in seen:
                    seen.append(ev.digests[name].hex())
    refs = [
        EventReference(pcr=pcr, event_type=etype, variable=var, digests=values)
        for (pcr, etype, var), values in sorted(digests.items())
    ]
    return MeasuredBootPolicy(
        pcr_bank=bank,
        pcrs=sorted(set(pcrs)),
        require_secure_boot=require_secure_boot,
        references=refs,
    )
