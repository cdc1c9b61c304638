"""The vocabulary of Security on Demand (Tables II and III of the paper).

Every enum value is a CamelCase string that appears on the wire; the order of members is
the paper's column order and is used for display.
"""

from enum import StrEnum


class Entity(StrEnum):
    """An attacking entity: a column of Tables II and III, in the paper's order."""

    SAME_APP = "SameApp"
    OTHER_APPS = "OtherApps"
    GUEST_OS = "GuestOS"
    OTHER_VMS = "OtherVMs"
    HYPERVISOR = "Hypervisor"
    HARDWARE = "Hardware"
    CLOUD_MANAGER = "CloudManager"


class Property(StrEnum):
    """A security property protected against an entity (room for `Availability` later)."""

    CONFIDENTIALITY = "Confidentiality"
    INTEGRITY = "Integrity"


class SecurityOption(StrEnum):
    """The seven options of Section III-B; each selects one entity column."""

    BASIC = "Basic"
    HYPERVISOR_PROTECTION = "HypervisorProtection"
    HARDWARE_PROTECTION = "HardwareProtection"
    CLOUD_MANAGER_PROTECTION = "CloudManagerProtection"
    GUEST_OS_PROTECTION = "GuestOSProtection"
    APPS_PROTECTION = "AppsProtection"
    SAME_APP_PROTECTION = "SameAppProtection"


OPTION_ENTITY: dict[SecurityOption, Entity] = {
    SecurityOption.BASIC: Entity.OTHER_VMS,
    SecurityOption.HYPERVISOR_PROTECTION: Entity.HYPERVISOR,
    SecurityOption.HARDWARE_PROTECTION: Entity.HARDWARE,
    SecurityOption.CLOUD_MANAGER_PROTECTION: Entity.CLOUD_MANAGER,
    SecurityOption.GUEST_OS_PROTECTION: Entity.GUEST_OS,
    SecurityOption.APPS_PROTECTION: Entity.OTHER_APPS,
    SecurityOption.SAME_APP_PROTECTION: Entity.SAME_APP,
}
"""Option → the entity column it selects (Section III-B, numbered 1 to 7 in this order)."""

ENTITY_OPTION: dict[Entity, SecurityOption] = {e: o for o, e in OPTION_ENTITY.items()}

# Section III-E: in-VM protection (options 5 and 6) relies on introspection by a trusted
# hypervisor, so it cannot be combined with protection from the hypervisor (option 2).
IN_VM_OPTIONS: tuple[SecurityOption, ...] = (
    SecurityOption.GUEST_OS_PROTECTION,
    SecurityOption.APPS_PROTECTION,
)
CONFLICT_REASON = (
    "in-VM protection relies on introspection by a trusted hypervisor (paper, Section III-E)"
)


class Scope(StrEnum):
    """What of the VM a protection covers (Table III, last column)."""

    FULL_VM = "FullVM"
    DATA_AND_APP = "DataAndApp"
    APP = "App"
    DATA = "Data"
    DATA_AND_TSM = "DataAndTSM"


# The partial order of scopes: each scope → the scopes it covers (reflexive).
# A trusted software module is not the whole app, so `DataAndTSM` covers `Data` only.
SCOPE_COVERS: dict[Scope, frozenset[Scope]] = {
    Scope.FULL_VM: frozenset(Scope),
    Scope.DATA_AND_APP: frozenset({Scope.DATA_AND_APP, Scope.APP, Scope.DATA}),
    Scope.APP: frozenset({Scope.APP}),
    Scope.DATA: frozenset({Scope.DATA}),
    Scope.DATA_AND_TSM: frozenset({Scope.DATA_AND_TSM, Scope.DATA}),
}


def scope_covers(offered: Scope, requested: Scope) -> bool:
    """Whether a protection of scope `offered` covers a request for scope `requested`."""
    return requested in SCOPE_COVERS[offered]


class Cell(StrEnum):
    """A Table III cell. Only `Yes` protects; Table III's `n-a` is `NotApplicable`."""

    YES = "Yes"
    NO = "No"
    NOT_APPLICABLE = "NotApplicable"
