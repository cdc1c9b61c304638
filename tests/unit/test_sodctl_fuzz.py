"""`sodctl` on malformed files: hypothesis over bytes, text, YAML shapes and broken manifests.

Property, for `sodctl matrix`, `sodctl match` and `sodctl table` (the file commands): the exit
code is 0 (only when the models accept every document) or 2; on 2, stdout is empty and stderr is
exactly one line `sodctl: error: FILE...: ...` with no traceback; a manifest broken on purpose
(`tests.reliability.manifests`) is rejected with the broken field named.

Inputs: random bytes and text; random YAML structures (deep nesting, every scalar type, huge
ints, NaN, dates, non-string keys); manifests with one field broken (wrong type, unknown enum,
too long, pattern, out of range, too many/few items, duplicates in sets, a required field
removed, a CEL rule broken); pathological YAML (alias bombs, 10 000 levels of nesting, python
tags, non-UTF-8, BOM, NUL, a bad document after a good one, newlines in names).

In-process through `sod_operator.cli.main.main` (many examples) and through the installed
console script as a subprocess (fewer examples, `slow`). Not covered: the cluster commands
(`explain`, `sandbox`), which the e2e tier runs.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sod_operator.api.v1alpha1.parsing import ManifestError, parse_object
from sod_operator.cli.main import main

from tests.reliability.figures import record
from tests.reliability.manifests import KINDS, Case, cases, manifest, names_field

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "examples" / "profiles"
SODCTL = Path(sys.executable).with_name("sodctl")
FUZZ = settings(
    max_examples=int(os.environ.get("SOD_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SUBPROCESS_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("SOD_FUZZ_SUBPROCESS", "20")))

# What the offline models accept although the apiserver rejects it. The operator only ever sees
# objects the apiserver stored, so these affect `sodctl` on files alone; docs/RELIABILITY.md
# lists them as known limits.
LENIENT_RULES = {
    "unknownField",  # extra="ignore": tolerate fields of a newer CRD
    "typeCoercible",  # pydantic's lax mode: "12" -> 12, true -> 1, "true" -> True
}
TRAILER_WORDS = ("not found",)


def _commands(path: Path, kind: str) -> list[list[str]]:
    if kind == "ServerSecurityProfile":
        return [["table", "--profiles", str(path.parent)]]
    return [["matrix", str(path)], ["match", str(path), "--profiles", str(PROFILES)]]


RELIABILITY_ITEM = "4"
"""A failure here is a failed row of item 4 in docs/RELIABILITY.md."""

RUNS: collections.Counter[str] = collections.Counter()
"""Invocations by outcome, for docs/RELIABILITY.md."""


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    if RUNS:
        record(
            "4",
            "sodctl matrix/match/table on malformed files (hypothesis + pathological YAML)",
            sum(RUNS.values()),
            f"{RUNS['exit 2']} refused with one line and exit code 2, {RUNS['exit 0']} accepted "
            "(valid by the models); 0 tracebacks",
            invocations=dict(RUNS),
        )


def _count(code: int, mode: str) -> None:
    RUNS[f"exit {code}"] += 1
    if mode == "subprocess":
        RUNS["through the console script"] += 1


def run_inprocess(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors exit 2 by themselves
            code = int(exc.code or 0)
    _count(code, "in-process")
    return code, out.getvalue(), err.getvalue()


def run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(SODCTL), *argv], capture_output=True, text=True, check=False, timeout=120
    )
    _count(proc.returncode, "subprocess")
    return proc.returncode, proc.stdout, proc.stderr


def assert_clean_failure(code: int, out: str, err: str, path: Path) -> str:
    """Exit 2, nothing on stdout, one line on stderr naming the file, no traceback."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in err, err
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("sodctl: error: "), line
    assert str(path) in line, line
    return line


def _fresh(tmp: Path, name: str) -> Path:
    """A new empty directory per example (hypothesis reuses the function's tmp_path)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.iterdir():
        old.unlink()
    return tmp / name


# --- random bytes, text and YAML shapes ---------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 5, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.dates(),
    st.sampled_from(["SecureVM", "sod.dev/v1alpha1", "Basic", "HypervisorProtection", ""]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers() | st.booleans(), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def object_shaped(draw: st.DrawFn) -> Any:
    """Mostly mappings with our apiVersion/kind, so the models (not just YAML) are exercised."""
    doc = draw(st.dictionaries(st.text(max_size=10), yaml_values, max_size=4))
    if draw(st.booleans()):
        doc["apiVersion"] = draw(st.sampled_from(["sod.dev/v1alpha1", "sod.dev/v1", 7]))
    if draw(st.booleans()):
        doc["kind"] = draw(st.sampled_from([*KINDS, "Pod", ["SecureVM"], None]))
    if draw(st.booleans()):
        doc["metadata"] = draw(
            st.one_of(yaml_values, st.fixed_dictionaries({"name": yaml_scalars}))
        )
    if draw(st.booleans()):
        doc["spec"] = draw(yaml_values)
    return doc


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


@FUZZ
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes):
    path = _fresh(tmp_path / "bytes", "input.yaml")
    path.write_bytes(data)
    for argv in _commands(path, "SecureVM"):
        code, out, err = run_inprocess(argv)
        if code == 0:  # e.g. "" plus a valid document is impossible here, but be exact
            pytest.fail(f"random bytes accepted: {data!r} -> {out}")
        assert_clean_failure(code, out, err, path)


@FUZZ
@given(docs=st.lists(object_shaped() | yaml_values, min_size=1, max_size=3))
def test_random_yaml_shapes_never_crash(tmp_path: Path, docs: list[Any]):
    path = _fresh(tmp_path / "shapes", "input.yaml")
    path.write_text(yaml.safe_dump_all(docs, allow_unicode=True))
    for argv in _commands(path, "SecureVM"):
        code, out, err = run_inprocess(argv)
        if code != 0:
            assert_clean_failure(code, out, err, path)


# --- manifests broken one field at a time --------------------------------------------------------


def model_verdict(case: Case) -> ManifestError | None:
    try:
        parse_object(manifest(case.kind, case.spec, "fuzz", "ns"))
    except ManifestError as err:
        return err
    return None


def reported_fields(line: str) -> list[str]:
    """The field paths an error line names: `spec.x`, and `spec.x.y` for `spec.x: y: ...`."""
    out = []
    for m in re.finditer(r"(?:^|: )((?:spec|metadata|kind|apiVersion)[\w.\[\]]*): ", line):
        out.append(m.group(1))
        rest = line[m.end() :]
        inner = re.match(r"([A-Za-z][\w.\[\]]*): ", rest)
        if inner:
            out.append(f"{m.group(1)}.{inner.group(1)}")
    return out


def check_case(case: Case, runner: Any, tmp: Path, *, all_commands: bool = True) -> None:
    path = _fresh(tmp, f"{case.kind.lower()}.yaml")
    path.write_text(_dump(manifest(case.kind, case.spec, "fuzz", "ns")))
    rejected = model_verdict(case)
    commands = _commands(path, case.kind)
    for argv in commands if all_commands else commands[:1]:
        code, out, err = runner(argv)
        if code == 0:
            assert rejected is None, f"sodctl accepted what the model rejects: {rejected}"
            assert out
            assert not err
            if case.violation is not None:
                assert case.violation.rule in LENIENT_RULES, (
                    f"sodctl accepted a manifest with {case.detail}:\n{_dump(case.spec)}"
                )
            continue
        line = assert_clean_failure(code, out, err, path)
        if rejected is None:
            # The model accepts the object; only resolving it may fail (a package not installed).
            assert any(w in line for w in TRAILER_WORDS), line
            continue
        if case.violation is not None:
            fields = reported_fields(line)
            assert any(names_field(f, case.violation.field) for f in fields), (
                f"{case.detail}: error does not name {case.violation.field}: {line}"
            )


@pytest.mark.parametrize("kind", KINDS)
def test_broken_manifests_name_the_field(tmp_path: Path, kind: str):
    @FUZZ
    @given(case=cases(kind))
    def run(case: Case) -> None:
        check_case(case, run_inprocess, tmp_path / "cases")

    run()


# --- pathological YAML ---------------------------------------------------------------------------

_HEAD = "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: x}\n"
_BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, c in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
PATHOLOGICAL: dict[str, bytes] = {
    "alias-bomb-in-options": (
        _HEAD
        + "x:\n"
        + "".join("  " + ln + "\n" for ln in _BOMB.splitlines())
        + "spec: {security: {options: *i}, vmRef: {name: v}}\n"
    ).encode(),
    "alias-bomb-in-template": (
        _HEAD
        + "x:\n"
        + "".join("  " + ln + "\n" for ln in _BOMB.splitlines())
        + "spec: {security: {options: [Basic]}, template: {a: *i}}\n"
    ).encode(),
    "alias-bomb-in-name": (
        "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nx:\n"
        + "".join("  " + ln + "\n" for ln in _BOMB.splitlines())
        + "metadata: {name: *i}\nspec: {security: {options: [Basic]}, vmRef: {name: v}}\n"
    ).encode(),
    "deep-flow-nesting": (_HEAD + "spec: " + "[" * 10_000 + "]" * 10_000 + "\n").encode(),
    "deep-block-nesting": (_HEAD + "spec:\n" + "".join("  " * 1 + "- " * 3000 + "x\n")).encode(),
    "deep-mapping-in-template": (
        _HEAD
        + "spec:\n  security: {options: [Basic]}\n  template: "
        + "{a: " * 3000
        + "1"
        + "}" * 3000
        + "\n"
    ).encode(),
    "python-tag": (_HEAD + "spec: !!python/object/apply:os.system ['true']\n").encode(),
    "unknown-tag": (_HEAD + "spec: !vault {security: {options: [Basic]}}\n").encode(),
    "non-utf8": b"apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: \xff\xfe}\n",
    "utf16-bom": "apiVersion: sod.dev/v1alpha1\nkind: SecureVM\n".encode("utf-16"),
    "nul-byte": (_HEAD + "spec: {security: {options: [Ba\x00sic]}}\n").encode(),
    "tab-indent": (_HEAD + "spec:\n\tsecurity: {}\n").encode(),
    "bad-second-document": (
        _HEAD + "spec: {security: {options: [Basic]}, vmRef: {name: v}}\n---\nspec: [\n"
    ).encode(),
    "second-document-wrong-kind": (
        _HEAD + "spec: {security: {options: [Basic]}, vmRef: {name: v}}\n---\nkind: Pod\n"
    ).encode(),
    "newline-in-name": (
        b'apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: "a\\nb"}\n'
        b"spec: {security: {options: [Bogus]}, vmRef: {name: v}}\n"
    ),
    "newline-in-enum": (
        _HEAD + 'spec: {security: {options: ["Basic\\nX"]}, vmRef: {name: v}}\n'
    ).encode(),
    "name-is-a-mapping": (
        b"apiVersion: sod.dev/v1alpha1\nkind: SecureVM\nmetadata: {name: {a: 1}}\n"
        b"spec: {security: {options: [Basic]}, vmRef: {name: v}}\n"
    ),
    "kind-is-a-list": b"apiVersion: sod.dev/v1alpha1\nkind: [SecureVM]\nmetadata: {name: x}\n",
    "non-string-keys": (
        _HEAD + "spec: {1: 2, security: {options: [Basic]}, vmRef: {name: v}, ? [a, b] : c}\n"
    ).encode(),
    "huge-int": (
        _HEAD + "spec: {security: {options: [Basic]}, vmRef: {name: v}, "
        "relocation: {failClosed: {deadlineSeconds: " + "9" * 5000 + "}}}\n"
    ).encode(),
    "nan-deadline": (
        _HEAD + "spec: {security: {options: [Basic]}, vmRef: {name: v}, "
        "relocation: {failClosed: {deadlineSeconds: .nan}}}\n"
    ).encode(),
    "huge-scalar": (
        _HEAD + "spec: {security: {package: " + "a" * 2_000_000 + "}, vmRef: {name: v}}\n"
    ).encode(),
    "duplicate-keys": (
        _HEAD + "spec: {security: {options: [Basic]}, security: {options: [Bogus]}, "
        "vmRef: {name: v}}\n"
    ).encode(),
    "directory-instead-of-file": b"",
}
ALLOWED_OK = {"non-string-keys", "duplicate-keys"}
"""Inputs that are legal YAML for a valid object (PyYAML keeps the last duplicate key; a
non-string key is an unknown field) — sodctl may accept them; it must still never crash."""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_yaml(tmp_path: Path, name: str):
    path = tmp_path / "input.yaml"
    if name == "directory-instead-of-file":
        path.mkdir()
    else:
        path.write_bytes(PATHOLOGICAL[name])
    for argv in _commands(path, "SecureVM"):
        code, out, err = run_inprocess(argv)
        if code == 0 and name in ALLOWED_OK:
            continue
        assert_clean_failure(code, out, err, path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["deep-flow-nesting", "alias-bomb-in-options", "python-tag"])
def test_pathological_yaml_in_profiles_and_packages_dirs(tmp_path: Path, name: str):
    bad = tmp_path / "dir"
    bad.mkdir()
    (bad / "bad.yaml").write_bytes(PATHOLOGICAL[name].replace(b"SecureVM", b"SecurityPackage"))
    svm = ROOT / "examples" / "securevm-medical-records.yaml"
    for argv in (
        ["table", "--profiles", str(bad)],
        ["match", str(svm), "--profiles", str(bad)],
        ["matrix", str(svm), "--packages", str(bad)],
    ):
        code, out, err = run_inprocess(argv)
        assert_clean_failure(code, out, err, bad / "bad.yaml")


# --- the installed console script ----------------------------------------------------------------


@pytest.mark.slow
@SUBPROCESS_FUZZ
@given(case=st.sampled_from(KINDS).flatmap(cases))
def test_console_script_on_broken_manifests(tmp_path: Path, case: Case):
    assert SODCTL.exists(), f"{SODCTL}: install the project (make venv)"
    check_case(case, run_subprocess, tmp_path / "cases", all_commands=False)


@pytest.mark.slow
@settings(SUBPROCESS_FUZZ, max_examples=SUBPROCESS_FUZZ.max_examples // 2)
@given(docs=st.lists(object_shaped() | yaml_values, min_size=1, max_size=2))
def test_console_script_on_random_yaml(tmp_path: Path, docs: list[Any]):
    path = _fresh(tmp_path / "shapes", "input.yaml")
    path.write_text(yaml.safe_dump_all(docs, allow_unicode=True))
    code, out, err = run_subprocess(["matrix", str(path)])
    if code != 0:
        assert_clean_failure(code, out, err, path)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(set(PATHOLOGICAL) - {"directory-instead-of-file"}))
def test_console_script_on_pathological_yaml(tmp_path: Path, name: str):
    path = tmp_path / "input.yaml"
    path.write_bytes(PATHOLOGICAL[name])
    code, out, err = run_subprocess(["matrix", str(path)])
    if code == 0 and name in ALLOWED_OK:
        return
    assert_clean_failure(code, out, err, path)
