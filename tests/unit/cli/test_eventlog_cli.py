"""`sodctl eventlog` and `sodctl reference-state` on real logs (go-attestation's test data),
compared with `tpm2_eventlog`; bad files (random bytes, truncations and bit flips of real
logs, directories, missing files) give one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy, PcrBank
from sod_operator.attestation import eventlog, measuredboot
from sod_operator.cli.main import main

from tests.unit.attestation.test_eventlog_real import CROSS_CHECKED, DATA, tpm2_eventlog

SODCTL = Path(sys.executable).with_name("sodctl")
FUZZ = settings(
    max_examples=int(os.environ.get("SOD_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
REAL = sorted(p.name for p in DATA.iterdir() if p.name.endswith("eventlog"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", CROSS_CHECKED)
def test_json_agrees_with_tpm2_eventlog(capsys, name: str) -> None:
    code, out, err = run(capsys, "eventlog", str(DATA / name), "-o", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    their_events, their_pcrs = tpm2_eventlog(DATA / name)
    assert doc["pcrs"] == {b: {str(i): v for i, v in p.items()} for b, p in their_pcrs.items()}
    assert [(e["pcr"], e["type"], e["digests"]) for e in doc["events"]] == their_events
    for values in doc["pcrs"].values():
        assert all(k.isdecimal() and v == v.lower() for k, v in values.items())


def test_json_decodes_variables_paths_and_text(capsys) -> None:
    _, out, _ = run(
        capsys,
        "eventlog",
        str(DATA / "ubuntu_2104_shielded_vm_no_secure_boot_eventlog"),
        "-o",
        "json",
    )
    events = json.loads(out)["events"]
    assert events[3]["variable"] == {
        "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c",
        "name": "SecureBoot",
        "data": "00",
    }
    assert events[27]["path"] == "\\EFI\\ubuntu\\grubx64.efi"
    assert events[104]["text"] == "Exit Boot Services Invocation"


@pytest.mark.parametrize("name", REAL)
def test_text_lists_every_event(capsys, name: str) -> None:
    code, out, err = run(capsys, "eventlog", str(DATA / name))
    assert (code, err) == (0, "")
    log = eventlog.parse((DATA / name).read_bytes())
    assert f"{len(log.events)} events" in out.splitlines()[0]


def test_reference_state_is_a_policy_a_profile_accepts(capsys, tmp_path: Path) -> None:
    log_path = DATA / "sb_cert_eventlog"
    code, out, err = run(
        capsys, "reference-state", str(log_path), "--pcrs", "0,4,7", "--require-secure-boot"
    )
    assert (code, err) == (0, "")
    policy = AttestationPolicy.model_validate(yaml.safe_load(out))
    assert policy.measured_boot is not None
    assert policy.measured_boot.pcrs == [0, 4, 7]
    log = eventlog.parse(log_path.read_bytes())
    quoted = log.replay()["sha256"]
    assert measuredboot.evaluate(policy.measured_boot, PcrBank.SHA256, quoted, log) == []


def test_reference_state_json(capsys) -> None:
    code, out, _ = run(
        capsys, "reference-state", str(DATA / "crypto_agile_eventlog"), "--pcrs", "4", "-o", "json"
    )
    assert code == 0
    refs = json.loads(out)["measuredBoot"]["references"]
    assert {r["eventType"] for r in refs} == {
        "EV_EFI_BOOT_SERVICES_APPLICATION",
        "EV_SEPARATOR",
    }


def one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("sodctl: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["eventlog", "/nonexistent/log"], "No such file"),
        (["eventlog", "/"], "Is a directory"),
        (["reference-state", str(DATA / "ebs_event_missing_eventlog")], "no sha256 digests"),
        (
            [
                "reference-state",
                str(DATA / "coreos_36_shielded_vm_no_secure_boot_eventlog"),
                "--require-secure-boot",
            ],
            "Secure Boot is disabled",
        ),
    ],
)
def test_bad_input_is_one_line(capsys, args: list[str], words: str) -> None:
    code, out, err = run(capsys, *args)
    one_line_error(code, out, err)
    assert words in err


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(capsys, tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "log"
    path.write_bytes(data)
    code, out, err = run(capsys, "eventlog", str(path), "-o", "json")
    if code != 0:
        one_line_error(code, out, err)


@FUZZ
@given(
    name=st.sampled_from(REAL),
    cut=st.integers(min_value=1, max_value=4000),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 7)), max_size=3),
)
def test_truncated_and_flipped_real_logs(
    capsys, tmp_path: Path, name: str, cut: int, flips
) -> None:
    raw = bytearray((DATA / name).read_bytes())
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    path = tmp_path / "log"
    path.write_bytes(bytes(raw[: max(len(raw) - cut, 0)]))
    code, out, err = run(capsys, "eventlog", str(path), "-o", "json")
    if code != 0:
        one_line_error(code, out, err)
    if not flips and cut < len(raw):
        if code == 0:
            # A TCG log has no length header: cut exactly between two events it is a shorter
            # log (the verifier refuses it because its replay misses the quoted PCRs). Then, and
            # only then, it parses, as a strict prefix of the whole log's events.
            _, whole, _ = run(capsys, "eventlog", str(DATA / name), "-o", "json")
            events, all_events = json.loads(out)["events"], json.loads(whole)["events"]
            assert len(events) < len(all_events)
            assert events == all_events[: len(events)]
        else:
            assert "truncated" in err or "event data" in err


def test_the_console_script(tmp_path: Path) -> None:
    assert SODCTL.exists(), f"{SODCTL}: install the project (make venv)"
    bad = tmp_path / "bad"
    bad.write_bytes((DATA / "crypto_agile_eventlog").read_bytes()[:-3])
    proc = subprocess.run([SODCTL, "eventlog", str(bad)], capture_output=True, text=True)
    one_line_error(proc.returncode, proc.stdout, proc.stderr)
    proc = subprocess.run(
        [SODCTL, "eventlog", str(DATA / "crypto_agile_eventlog"), "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["pcrs"]["sha256"]["7"].startswith("3d6207f9")
