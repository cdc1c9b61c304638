"""NodeAttestation lists are atomic in the CRD (fewer managedFields, cheaper writes: issue 17
item 3), so the apiserver no longer refuses duplicate keys: the model must, and the verifier
treats an object that does not parse as no evidence."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sod_codegen import crdgen
from sod_operator.api.v1alpha1.nodeattestation import (
    Claims,
    NodeAttestationStatus,
    Quote,
)

QUOTE = {"nonce": "ab" * 32, "attest": "AA==", "signature": "AA==", "pcrBank": "SHA256"}


def test_duplicate_pcr_indices_are_refused() -> None:
    pcr = {"index": 0, "value": "00" * 32}
    with pytest.raises(ValidationError, match=r"duplicate index '0' \(items 0 and 1\)"):
        Quote.model_validate({**QUOTE, "pcrs": [pcr, pcr]})


def test_duplicate_claims_are_refused() -> None:
    param = {"name": "kvm.nx_huge_pages", "value": "N"}
    with pytest.raises(ValidationError, match=r"duplicate name 'kvm\.nx_huge_pages'"):
        Claims.model_validate({"moduleParameters": [param, {**param, "value": "Y"}]})
    counter = {"name": "memoryViolations", "value": 0}
    with pytest.raises(ValidationError, match="duplicate name 'memoryViolations'"):
        Claims.model_validate({"counters": [counter, {**counter, "value": 1}]})


def test_duplicate_verdicts_and_profiles_are_refused() -> None:
    verdict = {
        "profile": "hyperwall",
        "result": "Verified",
        "reason": "Verified",
        "lastTransitionTime": "2026-12-07T00:00:00Z",
    }
    with pytest.raises(ValidationError, match="duplicate profile 'hyperwall'"):
        NodeAttestationStatus.model_validate({"verdicts": [verdict, verdict]})
    with pytest.raises(ValidationError, match="duplicate value 'hyperwall'"):
        NodeAttestationStatus.model_validate({"verifiedProfiles": ["hyperwall", "hyperwall"]})


def test_only_conditions_stay_a_list_map() -> None:
    """Every other list is atomic: no per-item managedFields entries."""
    (crd,) = [c for c in crdgen.CRDS if c.kind == "NodeAttestation"]
    found: dict[str, str] = {}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "array":
                found[path] = node["x-kubernetes-list-type"]
            for key, value in node.get("properties", {}).items():
                walk(value, f"{path}.{key}")
            walk(node.get("items"), path + "[]")

    walk(crdgen.structural_schema(crd.spec), "spec")
    walk(crdgen.structural_schema(crd.status), "status")
    assert found.pop("status.conditions") == "map"
    assert set(found.values()) == {"atomic"}
    assert "spec.tpm.quote.pcrs" in found
