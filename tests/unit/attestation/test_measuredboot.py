"""The measured-boot policy on real boot event logs (go-attestation's test data) and the
attacks: an event hidden from the log, a log that is not the quoted boot's, an unknown boot
loader, an extra boot component, Secure Boot disabled (or claimed by edited event data), a
truncated or oversized log. Also the reference state `sodctl reference-state` makes.

Here the "quote" is each log's own replay (these logs come without sha256 quotes); the
recorded swtpm quotes are used in test_measuredboot_verify.py.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
from pathlib import Path

import pytest
from sod_operator.api.v1alpha1.attestation_policy import MeasuredBootPolicy, PcrBank
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.attestation import eventlog, measuredboot
from sod_operator.attestation.eventlog import Event, EventLog, EventLogError

DATA = Path(__file__).parent / "data" / "eventlogs"
UBUNTU = "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"
GRUB = 27  # event #27: PCR 4, \EFI\ubuntu\grubx64.efi
PCRS = [0, 1, 2, 3, 4, 5, 7]


def load(name: str) -> EventLog:
    return eventlog.parse((DATA / name).read_bytes())


def quote_of(log: EventLog) -> dict[int, bytes]:
    """The PCR values a TPM that measured exactly this boot would quote."""
    return dict(log.replay()["sha256"])


def with_events(log: EventLog, events: list[Event]) -> EventLog:
    renumbered = tuple(dataclasses.replace(e, number=i) for i, e in enumerate(events))
    return dataclasses.replace(log, events=renumbered)


def other_digests(ev: Event) -> dict[str, bytes]:
    return {bank: bytes(b ^ 0x5A for b in d) for bank, d in ev.digests.items()}


@pytest.fixture
def ubuntu() -> EventLog:
    return load(UBUNTU)


@pytest.fixture
def policy(ubuntu: EventLog) -> MeasuredBootPolicy:
    return measuredboot.reference_state([ubuntu], PCRS)


def test_a_known_good_log_meets_its_own_reference_state(ubuntu, policy) -> None:
    assert measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(ubuntu), ubuntu) == []


def test_the_reference_state_names_db_dbx_and_the_boot_loaders(policy) -> None:
    keys = {(r.pcr, r.event_type, r.variable) for r in policy.references}
    for var in ("SecureBoot", "PK", "KEK", "db", "dbx"):
        assert (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", var) in keys
    loaders = next(
        r
        for r in policy.references
        if (r.pcr, r.event_type) == (4, "EV_EFI_BOOT_SERVICES_APPLICATION")
    )
    assert len(loaders.digests) == 2  # shim and grub
    # Round trip through the wire format a profile stores.
    again = MeasuredBootPolicy.model_validate(policy.model_dump(mode="json", by_alias=True))
    assert again == policy


def test_unknown_boot_loader_digest_names_the_event(ubuntu, policy) -> None:
    events = list(ubuntu.events)
    events[GRUB] = dataclasses.replace(events[GRUB], digests=other_digests(events[GRUB]))
    evil = with_events(ubuntu, events)
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(evil), evil)
    assert reason == R.EVENT_NOT_ALLOWED
    assert (
        "event #27 (PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION '\\EFI\\ubuntu\\grubx64.efi')" in message
    )


def test_an_extra_boot_component_names_the_event(ubuntu, policy) -> None:
    extra = Event(
        0,
        4,
        eventlog.EVENT_TYPE_CODES["EV_EFI_BOOT_SERVICES_APPLICATION"],
        {b: bytes(range(ubuntu.digest_sizes[b])) for b in ubuntu.banks},
        eventlog.image_load_data("\\EFI\\evil\\bootkit.efi", 4096),
    )
    evil = with_events(ubuntu, [*ubuntu.events[: GRUB + 1], extra, *ubuntu.events[GRUB + 1 :]])
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(evil), evil)
    assert reason == R.EVENT_NOT_ALLOWED
    assert (
        "event #28 (PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION '\\EFI\\evil\\bootkit.efi')" in message
    )


def test_hiding_an_event_breaks_the_replay(ubuntu, policy) -> None:
    quoted = quote_of(ubuntu)  # the TPM measured grub ...
    hidden = with_events(
        ubuntu, [e for e in ubuntu.events if e.number != GRUB]
    )  # ... the log hides it
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, quoted, hidden)
    assert reason == R.EVENT_LOG_MISMATCH
    assert "PCR 4 replays to" in message


def test_a_log_from_another_boot_does_not_match_the_quote(ubuntu, policy) -> None:
    coreos = load("coreos_36_shielded_vm_no_secure_boot_eventlog")
    findings = measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(coreos), ubuntu)
    assert findings
    assert {r for r, _ in findings} == {R.EVENT_LOG_MISMATCH}


def test_a_quoted_pcr_outside_the_policy_is_still_checked(ubuntu) -> None:
    narrow = measuredboot.reference_state([ubuntu], [4])
    quoted = quote_of(ubuntu)
    quoted[8] = bytes(32)  # the log extends PCR 8 (grub commands): it must match too
    [(reason, message)] = measuredboot.evaluate(narrow, PcrBank.SHA256, quoted, ubuntu)
    assert reason == R.EVENT_LOG_MISMATCH
    assert "PCR 8" in message


def test_a_policy_pcr_outside_the_quote(ubuntu, policy) -> None:
    quoted = quote_of(ubuntu)
    del quoted[7]
    [(reason, _)] = measuredboot.evaluate(policy, PcrBank.SHA256, quoted, ubuntu)
    assert reason == R.PCR_NOT_QUOTED


def test_secure_boot_disabled_names_the_event(ubuntu) -> None:
    policy = measuredboot.reference_state([ubuntu], PCRS).model_copy(
        update={"require_secure_boot": True}
    )
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(ubuntu), ubuntu)
    assert reason == R.SECURE_BOOT_DISABLED
    assert "event #3 (PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot)" in message
    assert "SecureBoot=00" in message


def test_secure_boot_claimed_by_edited_event_data(ubuntu) -> None:
    """Data edited to SecureBoot=1, digest kept: the replay still matches the quote, but the
    data is no longer what was measured."""
    events = list(ubuntu.events)
    sb = events[3]
    events[3] = dataclasses.replace(sb, data=sb.data[:-1] + b"\x01")
    forged = with_events(ubuntu, events)
    policy = measuredboot.reference_state([ubuntu], PCRS).model_copy(
        update={"require_secure_boot": True}
    )
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(ubuntu), forged)
    assert reason == R.SECURE_BOOT_DISABLED
    assert "not what its sha1 digest measured" in message


def test_secure_boot_enabled_log_passes() -> None:
    log = load("sb_cert_eventlog")
    policy = measuredboot.reference_state([log], [0, 7], require_secure_boot=True)
    assert policy.require_secure_boot
    assert measuredboot.evaluate(policy, PcrBank.SHA256, quote_of(log), log) == []


def test_reference_state_refuses_a_log_without_secure_boot(ubuntu) -> None:
    with pytest.raises(measuredboot.ReferenceStateError, match="SecureBoot=00"):
        measuredboot.reference_state([ubuntu], PCRS, require_secure_boot=True)


def test_two_logs_make_a_rollout_reference_state(ubuntu) -> None:
    coreos = load("coreos_36_shielded_vm_no_secure_boot_eventlog")
    both = measuredboot.reference_state([ubuntu, coreos], [4])
    for log in (ubuntu, coreos):
        assert measuredboot.evaluate(both, PcrBank.SHA256, quote_of(log), log) == []
    only_ubuntu = measuredboot.reference_state([ubuntu], [4])
    [(reason, _)] = measuredboot.evaluate(only_ubuntu, PcrBank.SHA256, quote_of(coreos), coreos)
    assert reason == R.EVENT_NOT_ALLOWED


def test_a_foreign_boot_chain_reports_the_first_events_and_a_count(ubuntu) -> None:
    empty = MeasuredBootPolicy(pcrs=[8])
    [(reason, message)] = measuredboot.evaluate(empty, PcrBank.SHA256, quote_of(ubuntu), ubuntu)
    assert reason == R.EVENT_NOT_ALLOWED
    assert message.count("is not in the reference state") == measuredboot.MAX_EVENT_FINDINGS
    assert f"and {len(ubuntu.extending(8)) - 5} more events" in message


def test_a_sha1_only_log_cannot_meet_a_sha256_policy(policy) -> None:
    legacy = load("ebs_event_missing_eventlog")
    [(reason, message)] = measuredboot.evaluate(policy, PcrBank.SHA256, {}, legacy)
    assert reason == R.EVENT_LOG_MISMATCH
    assert "no sha256 digests" in message


def test_no_log_and_another_bank(policy) -> None:
    [(reason, _)] = measuredboot.evaluate(policy, PcrBank.SHA256, {}, None)
    assert reason == R.EVENT_LOG_MISSING
    [(reason, _)] = measuredboot.evaluate(policy, PcrBank.SHA384, {}, None)
    assert reason == R.PCR_BANK_MISMATCH


# --------------------------------------------------------------------------- the wire encoding


def test_encode_decode_round_trip() -> None:
    raw = (DATA / UBUNTU).read_bytes()
    assert eventlog.serialize(measuredboot.decode(measuredboot.encode(raw))) == raw
    assert len(measuredboot.encode(raw)) < len(
        raw
    )  # gzip pays for base64 (digests do not compress)


@pytest.mark.parametrize("cut", [1, 7, 100, 5000])
def test_a_truncated_log_is_malformed_not_a_crash(cut: int) -> None:
    raw = (DATA / UBUNTU).read_bytes()
    with pytest.raises(EventLogError, match="truncated"):
        measuredboot.decode(measuredboot.encode(raw[:-cut]))


def test_a_truncated_gzip_stream() -> None:
    packed = base64.b64decode(measuredboot.encode((DATA / UBUNTU).read_bytes()))
    with pytest.raises(EventLogError, match="truncated gzip"):
        measuredboot.decode(base64.b64encode(packed[: len(packed) // 2]).decode())


def test_a_gzip_bomb_is_refused_before_it_inflates() -> None:
    bomb = base64.b64encode(gzip.compress(bytes(eventlog.MAX_LOG_BYTES + 1))).decode()
    with pytest.raises(EventLogError, match="inflates to more than"):
        measuredboot.decode(bomb)


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"plain bytes").decode()])
def test_not_base64_or_not_gzip(bad: str) -> None:
    with pytest.raises(EventLogError):
        measuredboot.decode(bad)
