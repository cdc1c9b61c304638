"""The security request as tenants write it (`SecureVM.spec.security`) and packages name it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from sod_operator.api.v1alpha1.base import (
    UNIQUE_SET,
    ApiModel,
    DNS1123Name,
    ShortText,
    unique_map,
    with_cel_rules,
)
from sod_operator.api.vocabulary import (
    CONFLICT_REASON,
    IN_VM_OPTIONS,
    OPTION_ENTITY,
    Entity,
    Property,
    Scope,
    SecurityOption,
)

_HYPERVISOR = SecurityOption.HYPERVISOR_PROTECTION


def option_conflict_message(in_vm: SecurityOption) -> str:
    """The admission message for combining `in_vm` with `HypervisorProtection`."""
    return f"options '{in_vm}' and '{_HYPERVISOR}' cannot be combined: {CONFLICT_REASON}"


def matrix_conflict_message(in_vm: SecurityOption) -> str:
    """The admission message for a matrix that asks for the same conflicting combination."""
    entity = OPTION_ENTITY[in_vm]
    return (
        f"matrix entities '{entity}' and '{Entity.HYPERVISOR}' cannot be combined "
        f"(options '{in_vm}' and '{_HYPERVISOR}'): {CONFLICT_REASON}"
    )


def _option_conflict_rules(field: str) -> list[dict[str, str]]:
    return [
        {
            "rule": (
                f"!has(self.{field}) || !(self.{field}.exists(o, o == '{_HYPERVISOR}') "
                f"&& self.{field}.exists(o, o == '{in_vm}'))"
            ),
            "message": option_conflict_message(in_vm),
            "reason": "FieldValueForbidden",
            "fieldPath": f".{field}",
        }
        for in_vm in IN_VM_OPTIONS
    ]


def _matrix_conflict_rules() -> list[dict[str, str]]:
    return [
        {
            "rule": (
                "!has(self.matrix) || !(self.matrix.exists(r, r.entity == 'Hypervisor') "
                f"&& self.matrix.exists(r, r.entity == '{OPTION_ENTITY[in_vm]}'))"
            ),
            "message": matrix_conflict_message(in_vm),
            "reason": "FieldValueForbidden",
            "fieldPath": ".matrix",
        }
        for in_vm in IN_VM_OPTIONS
    ]


OptionList = Annotated[
    list[SecurityOption],
    Field(min_length=1, max_length=7, json_schema_extra={"x-kubernetes-list-type": "set"}),
    UNIQUE_SET,
]
PropertyList = Annotated[
    list[Property],
    Field(min_length=1, max_length=2, json_schema_extra={"x-kubernetes-list-type": "set"}),
    UNIQUE_SET,
]


class MatrixRow(ApiModel):
    """One entity of an explicit Security Request Matrix and the properties protected from it."""

    entity: Entity
    """The attacking entity the VM must be protected from."""
    properties: PropertyList
    """The properties to protect from that entity."""


def check_option_conflict(options: list[SecurityOption] | None) -> str | None:
    """The conflict message when `options` combine in-VM protection with hypervisor protection."""
    if not options or _HYPERVISOR not in options:
        return None
    for in_vm in IN_VM_OPTIONS:
        if in_vm in options:
            return option_conflict_message(in_vm)
    return None


def check_matrix_conflict(matrix: list[MatrixRow] | None) -> str | None:
    """The conflict message for a matrix asking for the same combination as the options rule."""
    if not matrix:
        return None
    entities = {row.entity for row in matrix}
    if Entity.HYPERVISOR not in entities:
        return None
    for in_vm in IN_VM_OPTIONS:
        if OPTION_ENTITY[in_vm] in entities:
            return matrix_conflict_message(in_vm)
    return None


class SecurityRequestSpec(ApiModel):
    """What the VM must be protected from: exactly one of `options`, `package` or `matrix`.

    `options` are the seven options of the paper (Section III-B); the chosen `properties`
    apply to every chosen entity. A `package` names a SecurityPackage, which supplies the
    options, properties and scope. A `matrix` is an explicit Table II row.
    """

    model_config = with_cel_rules(
        {
            "rule": (
                "[has(self.options), has(self.package), has(self.matrix)].filter(x, x).size() == 1"
            ),
            "message": "set exactly one of `options`, `package` or `matrix`",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!has(self.package) || (!has(self.properties) && !has(self.scope))",
            "message": (
                "`properties` and `scope` come from the SecurityPackage: "
                "do not set them together with `package`"
            ),
            "reason": "FieldValueForbidden",
        },
        {
            "rule": "!has(self.matrix) || !has(self.properties)",
            "message": (
                "a `matrix` lists the properties of each entity: "
                "do not set `properties` together with `matrix`"
            ),
            "reason": "FieldValueForbidden",
        },
        *_option_conflict_rules("options"),
        *_matrix_conflict_rules(),
    )

    options: OptionList | None = None
    """Security options (Section III-B): Basic, HypervisorProtection, HardwareProtection,
    CloudManagerProtection, GuestOSProtection, AppsProtection, SameAppProtection."""
    package: DNS1123Name | None = None
    """Name of a SecurityPackage that expands to options, properties and scope."""
    matrix: (
        Annotated[
            list[MatrixRow],
            Field(
                min_length=1,
                max_length=7,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["entity"],
                },
            ),
            unique_map("entity"),
        ]
        | None
    ) = None
    """An explicit Security Request Matrix: per entity, the properties to protect."""
    properties: PropertyList | None = None
    """Properties the chosen options protect. Default: Confidentiality and Integrity."""
    scope: Scope | None = None
    """What of the VM must be protected (Table III, last column). Default: FullVM."""

    @model_validator(mode="after")
    def _one_form_and_no_conflict(self) -> SecurityRequestSpec:
        # Mirrors the CEL rules above, so offline tools (sodctl) reject what the apiserver rejects.
        given = [n for n in ("options", "package", "matrix") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of `options`, `package` or `matrix`")
        if self.package is not None and (self.properties is not None or self.scope is not None):
            raise ValueError(
                "`properties` and `scope` come from the SecurityPackage: "
                "do not set them together with `package`"
            )
        if self.matrix is not None and self.properties is not None:
            raise ValueError(
                "a `matrix` lists the properties of each entity: "
                "do not set `properties` together with `matrix`"
            )
        return self

    @field_validator("options")
    @classmethod
    def _options_compatible(
        cls, options: list[SecurityOption] | None
    ) -> list[SecurityOption] | None:
        conflict = check_option_conflict(options)
        if conflict:
            raise ValueError(conflict)
        return options

    @field_validator("matrix")
    @classmethod
    def _matrix_compatible(cls, matrix: list[MatrixRow] | None) -> list[MatrixRow] | None:
        conflict = check_matrix_conflict(matrix)
        if conflict:
            raise ValueError(conflict)
        return matrix


class SecurityPackageSpec(ApiModel):
    """A named bundle of options, e.g. `medical-records` (options 1, 5, 6, 7; scope Data)."""

    model_config = with_cel_rules(*_option_conflict_rules("options"))

    description: ShortText = ""
    """What the package is for, shown to tenants."""
    options: OptionList
    """The security options the package selects."""
    properties: PropertyList | None = None
    """Properties protected. Default: Confidentiality and Integrity."""
    scope: Scope | None = None
    """What of the VM is protected. Default: FullVM."""

    @field_validator("options")
    @classmethod
    def _options_compatible(cls, options: list[SecurityOption]) -> list[SecurityOption]:
        conflict = check_option_conflict(options)
        if conflict:
            raise ValueError(conflict)
        return options


def dump_spec(model: ApiModel) -> dict[str, Any]:
    """A model as it appears on the wire (camelCase, no unset fields)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
