"""The matching semantics of ARCHITECTURE.md ("Semantics"), checked on the paper's examples.

Covers: option → matrix resolution (Table II), explicit matrices, packages, the scope partial
order, per-cell reasons, the 5/6-with-2 conflict rule, and the satisfying sets of VM-A, VM-B
and medical-records against the examples' profiles. Node-level "no implicit union" is in
test_placement.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sod_operator.api.v1alpha1.security import MatrixRow, SecurityPackageSpec, SecurityRequestSpec
from sod_operator.api.vocabulary import (
    OPTION_ENTITY,
    Cell,
    Entity,
    Property,
    Scope,
    SecurityOption,
    scope_covers,
)
from sod_operator.cli.manifests import load_packages, load_profiles
from sod_operator.policy.matching import ProfileCapabilities, match, satisfying
from sod_operator.policy.request import RequestError, SecurityRequest, resolve_request

ROOT = Path(__file__).resolve().parents[3]
PROFILES = load_profiles(ROOT / "examples" / "profiles")
PACKAGES = load_packages(ROOT / "examples" / "packages")
C, I = Property.CONFIDENTIALITY, Property.INTEGRITY  # noqa: E741 (the paper's column names)


def request(**security: object) -> SecurityRequest:
    return resolve_request(SecurityRequestSpec.model_validate(security), PACKAGES)


def test_option_to_entity_mapping_is_the_papers():
    assert OPTION_ENTITY == {
        SecurityOption.BASIC: Entity.OTHER_VMS,
        SecurityOption.HYPERVISOR_PROTECTION: Entity.HYPERVISOR,
        SecurityOption.HARDWARE_PROTECTION: Entity.HARDWARE,
        SecurityOption.CLOUD_MANAGER_PROTECTION: Entity.CLOUD_MANAGER,
        SecurityOption.GUEST_OS_PROTECTION: Entity.GUEST_OS,
        SecurityOption.APPS_PROTECTION: Entity.OTHER_APPS,
        SecurityOption.SAME_APP_PROTECTION: Entity.SAME_APP,
    }


def test_vm_a_and_vm_b_rows_are_table_ii():
    vm_a = request(options=["Basic"], properties=["Confidentiality", "Integrity"])
    vm_b = request(options=["Basic", "HypervisorProtection"])
    assert vm_a.cells == {(Entity.OTHER_VMS, C), (Entity.OTHER_VMS, I)}
    assert vm_b.cells == {
        (Entity.OTHER_VMS, C),
        (Entity.OTHER_VMS, I),
        (Entity.HYPERVISOR, C),
        (Entity.HYPERVISOR, I),
    }
    assert vm_a.scope is vm_b.scope is Scope.FULL_VM


def test_properties_apply_to_every_chosen_entity():
    req = request(options=["Basic", "HardwareProtection"], properties=["Integrity"])
    assert req.cells == {(Entity.OTHER_VMS, I), (Entity.HARDWARE, I)}


def test_package_expands_to_options_properties_and_scope():
    req = request(package="medical-records")
    assert req.scope is Scope.DATA
    assert req.entities() == {Entity.OTHER_VMS, Entity.GUEST_OS, Entity.OTHER_APPS, Entity.SAME_APP}
    assert len(req.cells) == 8
    assert req.package == "medical-records"


def test_missing_package_names_the_field_and_the_package():
    with pytest.raises(RequestError) as err:
        request(package="no-such-package")
    assert err.value.field_path == "spec.security.package"
    assert "no-such-package" in err.value.reason
    assert err.value.missing_package == "no-such-package"


def test_explicit_matrix():
    req = request(matrix=[{"entity": "Hypervisor", "properties": ["Confidentiality"]}])
    assert req.cells == {(Entity.HYPERVISOR, C)}
    assert req.rows() == [MatrixRow(entity=Entity.HYPERVISOR, properties=[C])]


@pytest.mark.parametrize(
    ("offered", "requested", "covers"),
    [
        (Scope.FULL_VM, Scope.DATA_AND_TSM, True),
        (Scope.FULL_VM, Scope.APP, True),
        (Scope.DATA_AND_APP, Scope.APP, True),
        (Scope.DATA_AND_APP, Scope.DATA, True),
        (Scope.DATA_AND_APP, Scope.FULL_VM, False),
        (Scope.DATA_AND_APP, Scope.DATA_AND_TSM, False),
        (Scope.DATA_AND_TSM, Scope.DATA, True),
        (Scope.DATA_AND_TSM, Scope.APP, False),
        (Scope.DATA_AND_TSM, Scope.DATA_AND_APP, False),
        (Scope.APP, Scope.DATA, False),
        (Scope.DATA, Scope.APP, False),
        (Scope.DATA, Scope.DATA, True),
    ],
)
def test_scope_partial_order(offered: Scope, requested: Scope, covers: bool):
    assert scope_covers(offered, requested) is covers


def test_every_unmet_cell_is_reported_with_what_the_profile_offers():
    aegis = next(p for p in PROFILES if p.name == "aegis")
    result = match(request(options=["Basic", "HypervisorProtection"]), aegis)
    assert not result.satisfied
    assert [(u.entity, u.prop, u.offered) for u in result.unmet] == [
        (Entity.OTHER_VMS, C, Cell.NOT_APPLICABLE),
        (Entity.OTHER_VMS, I, Cell.NOT_APPLICABLE),
        (Entity.HYPERVISOR, C, Cell.NOT_APPLICABLE),
        (Entity.HYPERVISOR, I, Cell.NOT_APPLICABLE),
    ]
    assert result.scope_gap is Scope.DATA_AND_APP
    assert any("scope DataAndApp does not cover" in r for r in result.reasons(Scope.FULL_VM))


def test_only_yes_protects():
    prof = ProfileCapabilities(
        "p",
        {(Entity.HYPERVISOR, C): Cell.NOT_APPLICABLE, (Entity.HYPERVISOR, I): Cell.YES},
        Scope.FULL_VM,
    )
    assert not match(request(options=["HypervisorProtection"]), prof).satisfied
    assert match(
        request(options=["HypervisorProtection"], properties=["Integrity"]), prof
    ).satisfied


def test_unlisted_entity_counts_as_no():
    prof = ProfileCapabilities("p", {}, Scope.FULL_VM)
    assert match(request(options=["Basic"]), prof).unmet[0].offered is Cell.NO


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        (
            {"options": ["Basic"]},
            ["h-svm", "hypersafe", "hyperwall", "nohype", "sev-snp", "tdx", "tpm-measured-boot"],
        ),
        ({"options": ["Basic", "HypervisorProtection"]}, ["h-svm", "hyperwall", "sev-snp", "tdx"]),
        ({"package": "medical-records"}, ["bastion", "datasafe"]),
        (
            {"options": ["Basic", "HypervisorProtection", "HardwareProtection"]},
            [],  # nobody protects integrity from hardware for a full VM
        ),
        (
            {
                "options": ["Basic", "HypervisorProtection", "HardwareProtection"],
                "properties": ["Confidentiality"],
            },
            ["sev-snp", "tdx"],
        ),
        (
            {"options": ["AppsProtection"], "scope": "App"},
            ["aegis", "cell", "ibm-4758", "overshadow", "tpm", "xom"],
        ),
    ],
)
def test_satisfying_profiles_of_the_examples(security: dict[str, object], expected: list[str]):
    assert satisfying(request(**security), PROFILES) == expected


def test_no_implicit_union_between_profiles():
    # hyperwall protects from the hypervisor (FullVM), datasafe from the guest OS (Data):
    # neither alone satisfies a request for both, and matching never combines them.
    req = request(options=["GuestOSProtection", "Basic"], scope="Data")
    names = satisfying(req, PROFILES)
    assert "hyperwall" not in names
    assert "datasafe" in names


@pytest.mark.parametrize("in_vm", ["GuestOSProtection", "AppsProtection"])
def test_in_vm_protection_with_hypervisor_protection_is_rejected(in_vm: str):
    with pytest.raises(ValueError, match=f"'{in_vm}' and 'HypervisorProtection'") as err:
        SecurityRequestSpec.model_validate({"options": [in_vm, "HypervisorProtection"]})
    assert "trusted hypervisor" in str(err.value)
    with pytest.raises(ValueError, match=f"'{in_vm}' and 'HypervisorProtection'"):
        SecurityPackageSpec.model_validate({"options": ["HypervisorProtection", in_vm]})


def test_matrix_with_the_same_conflict_is_rejected():
    with pytest.raises(ValueError, match="'GuestOS' and 'Hypervisor'"):
        SecurityRequestSpec.model_validate(
            {
                "matrix": [
                    {"entity": "GuestOS", "properties": ["Integrity"]},
                    {"entity": "Hypervisor", "properties": ["Confidentiality"]},
                ]
            }
        )


@pytest.mark.parametrize(
    "security",
    [
        {},
        {"options": ["Basic"], "package": "medical-records"},
        {"package": "medical-records", "scope": "Data"},
        {
            "matrix": [{"entity": "GuestOS", "properties": ["Integrity"]}],
            "properties": ["Integrity"],
        },
    ],
)
def test_request_forms_are_exclusive(security: dict[str, object]):
    with pytest.raises(ValueError, match=r"set exactly one|do not set"):
        SecurityRequestSpec.model_validate(security)
