"""`sodctl matrix|table|match` on the examples, and one-line errors (exit code 2, no
traceback) for bad input. Runs the real console entry point in-process and as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sod_operator.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
EX = ROOT / "examples"
PROFILES = str(EX / "profiles")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (
            "securevm-vm-a.yaml",
            ["h-svm", "hypersafe", "hyperwall", "nohype", "sev-snp", "tdx", "tpm-measured-boot"],
        ),
        ("securevm-vm-b.yaml", ["h-svm", "hyperwall", "sev-snp", "tdx"]),
        ("securevm-medical-records.yaml", ["bastion", "datasafe"]),
        ("packages/medical-records.yaml", ["bastion", "datasafe"]),
    ],
)
def test_match_json_lists_exactly_the_satisfying_profiles(capsys, file: str, expected: list[str]):
    code, out, _ = run(capsys, "match", str(EX / file), "--profiles", PROFILES, "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["satisfiedBy"] == expected
    assert set(doc["unmet"]) == {p.stem for p in (EX / "profiles").glob("*.yaml")} - set(expected)
    assert all(doc["unmet"][p] for p in doc["unmet"])


def test_match_json_unmet_cells(capsys):
    _, out, _ = run(
        capsys, "match", str(EX / "securevm-vm-b.yaml"), "--profiles", PROFILES, "-o", "json"
    )
    doc = json.loads(out)
    assert doc["unmet"]["hypersafe"] == [
        {"entity": "Hypervisor", "property": "Confidentiality", "offered": "No"},
        {"entity": "Hypervisor", "property": "Integrity", "offered": "No"},
    ]
    assert {"scope": "DataAndApp", "requestedScope": "FullVM"} in doc["unmet"]["cell"]


def test_matrix_prints_the_table_ii_row(capsys):
    code, out, _ = run(capsys, "matrix", str(EX / "securevm-vm-b.yaml"))
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("default/vm-b"))
    assert row.split()[1:] == ["x"] * 6 + ["√"] * 4 + ["x"] * 4 + ["FullVM"]


def test_table_prints_table_iii(capsys):
    code, out, _ = run(capsys, "table", "--profiles", PROFILES)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("hyperwall"))
    assert row.split()[1:] == ["No"] * 6 + ["Yes"] * 4 + ["No"] * 4 + ["FullVM", "10", "-"]
    snp = next(line for line in out.splitlines() if line.startswith("sev-snp"))
    assert snp.endswith("launchSecurity.snp, firmware.bootloader.efi")


BAD = {
    "unknown-option.yaml": (
        "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: x}\n"
        "spec: {security: {options: [Basic, Telepathy]}, vmRef: {name: v}}\n",
        "spec.security.options[1]",
    ),
    "malformed.yaml": ("kind: SecureVM\nspec: [unclosed\n", "malformed YAML"),
    "wrong-kind.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "kind: expected SecureVM or SecurityPackage, got 'ConfigMap'",
    ),
    "missing-package.yaml": (
        "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: x}\n"
        "spec: {security: {package: no-such}, vmRef: {name: v}}\n",
        "spec.security.package: SecurityPackage 'no-such' not found",
    ),
    "conflict.yaml": (
        "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: x}\n"
        "spec: {security: {options: [AppsProtection, HypervisorProtection]}, vmRef: {name: v}}\n",
        "'AppsProtection' and 'HypervisorProtection' cannot be combined",
    ),
    "not-a-mapping.yaml": ("- just\n- a list\n", "expected a Kubernetes object"),
    "empty.yaml": ("", "no SecureVM or SecurityPackage found"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_with_exit_code_2(tmp_path: Path, name: str):
    text, expected = BAD[name]
    path = tmp_path / name
    path.write_text(text)
    for command in (["match", str(path), "--profiles", PROFILES], ["matrix", str(path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "sod_operator.cli.main", *command],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert expected in lines[0]
        assert "Traceback" not in proc.stderr


def test_missing_file_and_bad_profiles_dir(capsys, tmp_path: Path):
    code, _, err = run(capsys, "matrix", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such file" in err
    code, _, err = run(capsys, "match", str(EX / "securevm-vm-a.yaml"), "--profiles", str(tmp_path))
    assert code == 2
    assert "no ServerSecurityProfile manifests" in err
