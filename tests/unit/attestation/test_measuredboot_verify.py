"""Measured boot through the verifier's one pipeline (`monitor.step`), on the quotes recorded
from swtpm: the node sends a TCG2 event log of what its firmware extended; a profile with a
reference state verifies it, and the recorded attack (PCR 4 extended with an unexpected
component) revokes it with a reason naming the event once the log shows that component.

The event log is not signed: it is bound to the quote only by its replay, which is what the
mismatch cases show.
"""

from __future__ import annotations

import pytest
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.attestation import eventlog, measuredboot
from sod_operator.attestation.eventlog import EVENT_TYPE_CODES as T
from sod_operator.attestation.eventlog import Measurement

from tests.unit.attestation.conftest import Step, run, step, verdict

# What the recording's simulated firmware of a HyperWall node extended (sha256 of each payload;
# see tests/node_agent/record_golden.py), now with real TCG event types and event data.
FIRMWARE = Measurement(
    0,
    T["EV_S_CRTM_VERSION"],
    b"s\x00o\x00d\x00",
    b"sod-sandbox firmware 1.0 (simulated UEFI) on hyperwall hardware",
)
LOADER = Measurement(
    4,
    T["EV_EFI_BOOT_SERVICES_APPLICATION"],
    eventlog.image_load_data("\\EFI\\sod\\loader.efi", 27),
    b"sod-sandbox boot loader 1.0",
)
KERNEL = Measurement(
    4,
    T["EV_EFI_BOOT_SERVICES_APPLICATION"],
    eventlog.image_load_data("\\EFI\\sod\\vmlinuz", 55),
    b"sod-sandbox kernel 6.1.0 + initrd, hyperwall hypervisor",
)
SECURE_BOOT = Measurement(
    7, T["EV_EFI_VARIABLE_DRIVER_CONFIG"],
    eventlog.variable_data(eventlog.EFI_GLOBAL_VARIABLE, "SecureBoot", b"\x01"),
    b"secure boot: enabled, db=sod-sandbox-platform-key",
)  # fmt: skip
ROOTKIT = Measurement(
    4,
    T["EV_EFI_BOOT_SERVICES_APPLICATION"],
    eventlog.image_load_data("\\EFI\\rootkit.efi", 36),
    b"unexpected kernel module: rootkit.ko",
)
BOOT = [FIRMWARE, LOADER, KERNEL, SECURE_BOOT]


def encoded(measurements: list[Measurement]) -> str:
    return measuredboot.encode(eventlog.write_crypto_agile(measurements, ("sha256",)))


def policies() -> dict[str, AttestationPolicy | None]:
    reference = measuredboot.reference_state(
        [eventlog.parse(eventlog.write_crypto_agile(BOOT, ("sha256",)))], [0, 4]
    )
    return {
        "boot": AttestationPolicy(measured_boot=reference),
        "quote-only": AttestationPolicy(),
    }


def with_log(s: Step, measurements: list[Measurement] | None, raw: str | None = None) -> Step:
    spec = s.mutable_spec()
    spec["tpm"]["quote"]["eventLog"] = encoded(measurements) if measurements is not None else raw
    return Step(s.name, s.now, s.generation, spec, s.status_before, s.status_after)


def boot_verdict(s: Step) -> tuple[str, str, str]:
    out = run(s.attestation(), s.now, policies())
    result, reason = verdict(out, "boot")
    message = next(v.message for v in out.status.verdicts if v.profile == "boot")
    assert verdict(out, "quote-only") == ("Verified", "Verified")  # the quote itself is fine
    return result, reason, message


def test_the_log_of_the_recorded_boot_verifies() -> None:
    assert boot_verdict(with_log(step("good"), BOOT))[:2] == ("Verified", "Verified")


def test_the_recorded_attack_is_named_by_its_event() -> None:
    s = with_log(step("pcrExtended"), [*BOOT, ROOTKIT])
    result, reason, message = boot_verdict(s)
    assert (result, reason) == ("Rejected", R.EVENT_NOT_ALLOWED)
    assert "event #5 (PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION '\\EFI\\rootkit.efi')" in message


def test_hiding_the_attack_from_the_log_does_not_match_the_quote() -> None:
    result, reason, message = boot_verdict(with_log(step("pcrExtended"), BOOT))
    assert (result, reason) == ("Rejected", R.EVENT_LOG_MISMATCH)
    assert "PCR 4 replays to" in message


def test_an_unknown_boot_loader_in_the_log_does_not_match_the_quote() -> None:
    other = Measurement(LOADER.pcr, LOADER.type, LOADER.data, b"sod-sandbox boot loader 2.0")
    _, reason, _ = boot_verdict(with_log(step("good"), [FIRMWARE, other, KERNEL, SECURE_BOOT]))
    assert reason == R.EVENT_LOG_MISMATCH


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, R.EVENT_LOG_MISSING),
        (
            measuredboot.encode(eventlog.write_crypto_agile(BOOT, ("sha256",))[:-9]),
            R.EVENT_LOG_MALFORMED,
        ),
        ("H4sI", R.EVENT_LOG_MALFORMED),
    ],
)
def test_missing_or_broken_logs(raw: str | None, reason: R) -> None:
    assert boot_verdict(with_log(step("good"), None, raw))[:2] == ("Rejected", reason)


def test_the_sandbox_firmware_log_reproduces_the_recorded_quote() -> None:
    """sod_testbed.swtpm.boot_log("hyperwall"), as the sandbox's simulated firmware writes it,
    is the log of the boot the recorded quotes were taken after; its bootloader break is named."""
    from sod_testbed import swtpm

    s = step("good")
    raw = swtpm.boot_log_bytes("hyperwall")
    spec = s.mutable_spec()
    spec["tpm"]["quote"]["eventLog"] = measuredboot.encode(raw)
    reference = measuredboot.reference_state([eventlog.parse(raw)], [0, 4, 7])
    pols: dict[str, AttestationPolicy | None] = {"boot": AttestationPolicy(measured_boot=reference)}
    out = run(s.attestation(spec), s.now, pols)
    assert verdict(out, "boot") == ("Verified", "Verified")
    broken = raw + eventlog.write_event(swtpm.UNEXPECTED_BOOT_COMPONENT, swtpm.LOG_BANKS)
    log = eventlog.parse(broken)
    [(reason, message)] = measuredboot.evaluate(
        reference, reference.pcr_bank, log.replay()["sha256"], log
    )
    assert reason == R.EVENT_NOT_ALLOWED
    assert "event #5 (PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION '\\EFI\\sod\\bootkit.efi')" in message
