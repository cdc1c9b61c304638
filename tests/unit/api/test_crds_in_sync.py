"""The committed CRDs (and every other generated file) equal what the models generate now,
and the generated schemas are structural and bounded (what the apiserver and CEL's cost
budget need). The apiserver-side checks of the same schemas are in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sod_codegen import crdgen

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("target", crdgen.TARGETS, ids=lambda t: t.path)
def test_generated_file_is_committed(target: crdgen.Target):
    path = ROOT / target.path
    assert path.exists(), f"{target.path} is missing: run `python -m sod_codegen.crdgen --write`"
    assert path.read_text() == target.render(), (
        f"{target.path} is stale: run `python -m sod_codegen.crdgen --write`"
    )


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", crdgen.CRDS, ids=lambda c: c.kind)
def test_schema_is_structural_and_bounded(crd: crdgen.CrdDefinition):
    manifest = crdgen.crd_manifest(crd)
    schema = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    problems = []
    for path, node in _walk(schema):
        for forbidden in ("$ref", "$defs", "const", "anyOf", "title", "allOf", "oneOf"):
            if forbidden in node:
                problems.append(f"{path}: has {forbidden}")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false")
        kind = node.get("type")
        if kind is None and path:
            problems.append(f"{path}: no type")
        if (
            kind == "string"
            and "enum" not in node
            and "maxLength" not in node
            and path
            not in (
                ".apiVersion",
                ".kind",
            )
            and node.get("format") != "date-time"
        ):
            problems.append(f"{path}: string without maxLength or enum")
        if kind == "array":
            if "maxItems" not in node:
                problems.append(f"{path}: array without maxItems")
            if "x-kubernetes-list-type" not in node:
                problems.append(f"{path}: array without x-kubernetes-list-type")
        if kind == "integer" and ("minimum" not in node or "maximum" not in node):
            problems.append(f"{path}: integer without minimum and maximum")
    assert not problems, "\n".join(problems)


def test_conditions_follow_metav1_condition():
    schema = crdgen.structural_schema(crdgen.CRDS[0].status)  # type: ignore[arg-type]
    cond = schema["properties"]["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    item = cond["items"]
    assert set(item["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def test_crd_names_and_shape_follow_the_brief():
    by_kind = {c.kind: crdgen.crd_manifest(c) for c in crdgen.CRDS}
    assert set(by_kind) == {
        "SecureVM",
        "ServerSecurityProfile",
        "SecurityPackage",
        "NodeAttestation",
        "PlatformEnrollment",
    }
    expected = {
        "SecureVM": ("Namespaced", ["svm", "svms"]),
        "ServerSecurityProfile": ("Cluster", ["secprof"]),
        "SecurityPackage": ("Cluster", ["spkg"]),
        "NodeAttestation": ("Cluster", ["natt"]),
        "PlatformEnrollment": ("Cluster", ["penr"]),
    }
    for kind, (scope, short) in expected.items():
        spec = by_kind[kind]["spec"]
        assert spec["group"] == "sod.dev"
        assert spec["versions"][0]["name"] == "v1alpha1"
        assert spec["scope"] == scope
        assert spec["names"]["shortNames"] == short
        assert "sod" in spec["names"]["categories"]
    for kind in ("SecureVM", "ServerSecurityProfile", "NodeAttestation"):
        assert by_kind[kind]["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_checked_in_crd_files_are_the_briefs():
    for name in ("securevm", "serversecurityprofile", "securitypackage", "nodeattestation"):
        doc = yaml.safe_load((ROOT / "crds" / f"{name}.yaml").read_text())
        assert doc["kind"] == "CustomResourceDefinition"


def test_conflict_rule_is_a_cel_rule_naming_both_options():
    schema = crdgen.structural_schema(crdgen.CRDS[0].spec)
    rules = schema["properties"]["security"]["x-kubernetes-validations"]
    messages = [r["message"] for r in rules]
    for in_vm in ("GuestOSProtection", "AppsProtection"):
        assert any(
            f"'{in_vm}' and 'HypervisorProtection'" in m and "trusted hypervisor" in m
            for m in messages
        )
