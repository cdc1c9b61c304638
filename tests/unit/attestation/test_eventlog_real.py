"""Our event log parser on real logs from real machines (go-attestation's published test data,
see data/eventlogs/README.md), cross-checked against tpm2-tools' `tpm2_eventlog`, an
independent C parser: the same events (PCR, type, every digest) and the same replayed PCRs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from sod_operator.attestation import eventlog

DATA = Path(__file__).parent / "data" / "eventlogs"
# tpm2_eventlog 5.4 crashes on option_rom_eventlog and refuses short_no_action_eventlog.
CROSS_CHECKED = [
    "crypto_agile_eventlog",
    "coreos_36_shielded_vm_no_secure_boot_eventlog",
    "ubuntu_2104_shielded_vm_no_secure_boot_eventlog",
    "sb_cert_eventlog",
    "ebs_event_missing_eventlog",
]


Their = tuple[list[tuple[int, str, dict[str, str]]], dict[str, dict[int, str]]]


def tpm2_eventlog(path: Path) -> Their:
    """tpm2_eventlog's events and PCRs, read line by line: for SHA1 logs its output is not a
    YAML list (each event's keys at the same level), so a YAML loader would lose events."""
    exe = shutil.which("tpm2_eventlog")
    assert exe is not None, "tpm2_eventlog (Debian tpm2-tools) is a test dependency"
    out = subprocess.run([exe, str(path)], check=True, capture_output=True, text=True).stdout
    events: list[tuple[int, str, dict[str, str]]] = []
    pcrs: dict[str, dict[int, str]] = {}
    alg, bank = "sha1", ""
    for line in out.splitlines():
        key, _, value = line.strip().lstrip("- ").partition(":")
        value = value.strip().strip('"')
        if line == "pcrs:":
            bank = "?"
        elif bank and line.startswith("  ") and not line.startswith("    "):
            bank = key
            pcrs[bank] = {}
        elif bank:
            pcrs[bank][int(key)] = value.removeprefix("0x")
        elif key == "PCRIndex":
            events.append((int(value), "", {}))
            alg = "sha1"  # the legacy-format first record has a bare Digest
        elif key == "EventType":
            events[-1] = (events[-1][0], value, events[-1][2])
        elif key == "AlgorithmId":
            alg = value
        elif key == "Digest":
            events[-1][2][alg] = value
    return events, pcrs


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_events_and_replay_agree_with_tpm2_eventlog(name: str) -> None:
    log = eventlog.parse((DATA / name).read_bytes())
    their_events, their_pcrs = tpm2_eventlog(DATA / name)
    ours = [(e.pcr, e.type_name, {b: d.hex() for b, d in e.digests.items()}) for e in log.events]
    assert len(ours) == len(their_events) > 10
    assert ours == their_events
    our_pcrs = {b: {i: v.hex() for i, v in pcrs.items()} for b, pcrs in log.replay().items()}
    assert our_pcrs == their_pcrs


def test_windows_log_reproduces_the_pcrs_its_tpm_quoted() -> None:
    dump = json.loads((DATA / "windows_gcp_shielded_vm.json").read_text())
    log = eventlog.parse(base64.b64decode(dump["Log"]["Raw"]))
    quoted = {p["Index"]: base64.b64decode(p["Digest"]).hex() for p in dump["Log"]["PCRs"]}
    replayed = log.replay()["sha1"]
    assert sorted(replayed) == [0, 4, 5, 7, 11, 12, 13, 14]
    assert {i: v.hex() for i, v in replayed.items()} == {i: quoted[i] for i in replayed}
    assert eventlog.secure_boot_state(log) is True


def test_option_rom_log_decodes_the_windows_boot_chain() -> None:
    log = eventlog.parse((DATA / "option_rom_eventlog").read_bytes())
    assert not log.crypto_agile
    assert log.banks == ("sha1",)
    apps = [e for e in log.events if e.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert [eventlog.image_path(e.data) for e in apps] == ["\\EFI\\Microsoft\\Boot\\bootmgfw.efi"]
    names = [v.name for e in log.extending(7) if (v := e.variable) is not None]
    assert names[:5] == ["SecureBoot", "PK", "KEK", "db", "dbx"]
    # Windows logs its AIK for "PCR -1" in an EV_NO_ACTION event: parsed, never extended.
    assert log.events[-1].pcr == 0xFFFFFFFF
    assert not log.events[-1].extends
    assert 0xFFFFFFFF not in log.replay()["sha1"]


def test_startup_locality_only_log() -> None:
    log = eventlog.parse((DATA / "short_no_action_eventlog").read_bytes())
    assert [e.type_name for e in log.events] == ["EV_NO_ACTION"]
    assert log.replay() == {"sha1": {}}


@pytest.mark.parametrize(
    ("name", "enabled"),
    [
        ("sb_cert_eventlog", True),
        ("coreos_36_shielded_vm_no_secure_boot_eventlog", False),
        ("ubuntu_2104_shielded_vm_no_secure_boot_eventlog", False),
    ],
)
def test_secure_boot_state_as_measured(name: str, enabled: bool) -> None:
    log = eventlog.parse((DATA / name).read_bytes())
    assert eventlog.secure_boot_state(log) is enabled
    sb = next(e for e in log.extending(7) if (v := e.variable) and v.name == "SecureBoot")
    assert eventlog.measures_its_data(sb) is None


def test_ubuntu_boot_chain_names_shim_grub_and_the_kernel() -> None:
    log = eventlog.parse((DATA / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog").read_bytes())
    texts = [e.text or "" for e in log.events if e.type_name == "EV_IPL"]
    assert "kernel_cmdline: /boot/vmlinuz-5.11.0-1006-gcp" in "\n".join(texts)
    paths = [eventlog.image_path(e.data) for e in log.extending(4) if e.type == 0x80000003]
    assert paths == ["\\EFI\\ubuntu\\shimx64.efi", "\\EFI\\ubuntu\\grubx64.efi"]
