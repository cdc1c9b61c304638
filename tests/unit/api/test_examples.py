"""Every manifest under examples/ parses with the models (the same validation as the CRD
schema, including the CEL rules mirrored as validators); the apiserver dry-run of the same
files is in tests/e2e. Also pins the Table III cells of the paper's thirteen profiles.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sod_operator.api.constants import MAX_PROFILE_NAME
from sod_operator.api.v1alpha1.parsing import ManifestError, parse_object
from sod_operator.api.vocabulary import Entity

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
PAPER_PROFILES = [
    "aegis",
    "xom",
    "sp",
    "bastion",
    "datasafe",
    "h-svm",
    "hyperwall",
    "nohype",
    "overshadow",
    "hypersafe",
    "tpm",
    "cell",
    "ibm-4758",
]
# Table III, cell by cell: C and I for each entity in column order; - is n-a.
TABLE_III = {
    "aegis": ("NN YY NN -- -- -- --", "DataAndApp"),
    "xom": ("NN YY YY -- -- -- --", "App"),
    "sp": ("YY YY YY -- -- -- --", "DataAndTSM"),
    "bastion": ("YY YY YY YY NN YY NN", "DataAndTSM"),
    "datasafe": ("YY YY YY YY NN NN NN", "Data"),
    "h-svm": ("NN NN NN YY YY NN NN", "FullVM"),
    "hyperwall": ("NN NN NN YY YY NN NN", "FullVM"),
    "nohype": ("NN NN NN YY NN NN NN", "FullVM"),
    "overshadow": ("NN YY NN -- -- NN NN", "DataAndApp"),
    "hypersafe": ("NN NN NN YY NN NN NN", "FullVM"),
    "tpm": ("NY YY NN -- -- NN NN", "DataAndApp"),
    "cell": ("NY YY YY YY YY YN --", "DataAndApp"),
    "ibm-4758": ("NY YY NN -- -- YY --", "DataAndApp"),
}
LETTER = {"Yes": "Y", "No": "N", "NotApplicable": "-"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_parses(path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            parse_object(doc)


def test_all_profiles_of_the_brief_exist():
    names = {p.stem for p in (ROOT / "examples" / "profiles").glob("*.yaml")}
    assert set(PAPER_PROFILES) | {"sev-snp", "tdx", "tpm-measured-boot"} <= names


@pytest.mark.parametrize("name", PAPER_PROFILES)
def test_paper_profile_cells_are_table_iii(name: str):
    doc = yaml.safe_load((ROOT / "examples" / "profiles" / f"{name}.yaml").read_text())
    rows = {r["entity"]: r for r in doc["spec"]["protections"]}
    got = " ".join(
        LETTER[rows[e.value]["confidentiality"]] + LETTER[rows[e.value]["integrity"]]
        for e in Entity
    )
    assert (got, doc["spec"]["scope"]) == TABLE_III[name]
    assert doc["metadata"]["name"] == name


def test_medical_records_package_is_the_papers():
    doc = yaml.safe_load((ROOT / "examples" / "packages" / "medical-records.yaml").read_text())
    assert doc["spec"]["options"] == [
        "Basic",
        "GuestOSProtection",
        "AppsProtection",
        "SameAppProtection",
    ]
    assert doc["spec"]["scope"] == "Data"
    assert sorted(doc["spec"]["properties"]) == ["Confidentiality", "Integrity"]


def test_profile_name_must_fit_a_node_label():
    body = {
        "apiVersion": "sod.dev/v1alpha1",
        "kind": "ServerSecurityProfile",
        "metadata": {"name": "p" * (MAX_PROFILE_NAME + 1)},
        "spec": {"scope": "FullVM", "protections": []},
    }
    with pytest.raises(ManifestError, match=f"at most {MAX_PROFILE_NAME} characters") as err:
        parse_object(body)
    assert err.value.field_path == "metadata.name"
    body["metadata"]["name"] = "p" * MAX_PROFILE_NAME
    parse_object(body)


def test_a_duplicate_runtime_counter_is_named_at_its_index():
    # As the apiserver does for a list-type map (found by the sodctl fuzz: it said
    # `spec.attestation` before).
    body = {
        "apiVersion": "sod.dev/v1alpha1",
        "kind": "ServerSecurityProfile",
        "metadata": {"name": "dup"},
        "spec": {
            "scope": "FullVM",
            "protections": [],
            "attestation": {
                "runtime": [
                    {"counter": "violations", "max": 0},
                    {"counter": "violations", "max": 1},
                ]
            },
        },
    }
    with pytest.raises(ManifestError, match="violations") as err:
        parse_object(body)
    assert err.value.field_path == "spec.attestation.runtime[1]"
