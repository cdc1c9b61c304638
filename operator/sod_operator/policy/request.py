"""Resolve a security request (options, package or matrix) into a Table II row.

`resolve_request` is total: every way a request can be wrong becomes a `RequestError` with
the field path and a reason, so the operator can put it in a condition and `sodctl` can
print it as one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from sod_operator.api.v1alpha1.security import (
    MatrixRow,
    SecurityPackageSpec,
    SecurityRequestSpec,
    check_matrix_conflict,
    check_option_conflict,
)
from sod_operator.api.vocabulary import OPTION_ENTITY, Entity, Property, Scope, SecurityOption

DEFAULT_PROPERTIES: tuple[Property, ...] = (Property.CONFIDENTIALITY, Property.INTEGRITY)
DEFAULT_SCOPE = Scope.FULL_VM

RequestCell = tuple[Entity, Property]

CELL_ORDER: tuple[RequestCell, ...] = tuple((e, p) for e in Entity for p in Property)
"""Every cell in the paper's order (entity columns, then properties): iterating an Enum is slow,
so hot loops walk this tuple instead."""


@dataclass(frozen=True)
class SecurityRequest:
    """A resolved request: the set of (entity, property) cells to protect, and the scope."""

    cells: frozenset[RequestCell]
    scope: Scope
    package: str | None = None

    @cached_property
    def ordered_cells(self) -> tuple[RequestCell, ...]:
        """The requested cells in the paper's order (computed once; matching walks it often)."""
        return tuple(c for c in CELL_ORDER if c in self.cells)

    def rows(self) -> list[MatrixRow]:
        """The request as a Table II row, entities in the paper's column order."""
        return [
            MatrixRow(entity=e, properties=[p for p in Property if (e, p) in self.cells])
            for e in Entity
            if any((e, p) in self.cells for p in Property)
        ]

    def entities(self) -> frozenset[Entity]:
        return frozenset(e for e, _ in self.cells)

    @property
    def sensitivity(self) -> int:
        """How much the request asks for: used to relocate the most sensitive VMs first."""
        return len(self.cells)


class RequestError(ValueError):
    """A request that cannot be resolved, with the field that is wrong and why."""

    def __init__(self, field_path: str, reason: str, *, missing_package: str | None = None):
        super().__init__(f"{field_path}: {reason}")
        self.field_path = field_path
        self.reason = reason
        self.missing_package = missing_package


def cells_from_options(
    options: Iterable[SecurityOption], properties: Iterable[Property]
) -> frozenset[RequestCell]:
    """Options times properties: the chosen properties apply to every chosen entity."""
    props = tuple(properties)
    return frozenset((OPTION_ENTITY[o], p) for o in options for p in props)


def cells_from_matrix(matrix: Iterable[MatrixRow]) -> frozenset[RequestCell]:
    return frozenset((row.entity, p) for row in matrix for p in row.properties)


def resolve_package(package: SecurityPackageSpec, name: str | None = None) -> SecurityRequest:
    """The request a SecurityPackage stands for."""
    conflict = check_option_conflict(package.options)
    if conflict:
        raise RequestError("spec.options", conflict)
    return SecurityRequest(
        cells=cells_from_options(package.options, package.properties or DEFAULT_PROPERTIES),
        scope=package.scope or DEFAULT_SCOPE,
        package=name,
    )


def resolve_request(
    security: SecurityRequestSpec,
    packages: Mapping[str, SecurityPackageSpec],
    field_path: str = "spec.security",
) -> SecurityRequest:
    """Resolve `security` to its Table II row, looking packages up in `packages`."""
    if security.package is not None:
        package = packages.get(security.package)
        if package is None:
            raise RequestError(
                f"{field_path}.package",
                f"SecurityPackage '{security.package}' not found: create it, or name one of "
                f"{sorted(packages) or 'the installed packages'}",
                missing_package=security.package,
            )
        try:
            return resolve_package(package, security.package)
        except RequestError as err:
            raise RequestError(
                f"{field_path}.package", f"SecurityPackage '{security.package}': {err.reason}"
            ) from err
    scope = security.scope or DEFAULT_SCOPE
    if security.matrix is not None:
        conflict = check_matrix_conflict(security.matrix)
        if conflict:
            raise RequestError(f"{field_path}.matrix", conflict)
        return SecurityRequest(cells=cells_from_matrix(security.matrix), scope=scope)
    if security.options:
        conflict = check_option_conflict(security.options)
        if conflict:
            raise RequestError(f"{field_path}.options", conflict)
        return SecurityRequest(
            cells=cells_from_options(security.options, security.properties or DEFAULT_PROPERTIES),
            scope=scope,
        )
    raise RequestError(field_path, "set exactly one of `options`, `package` or `matrix`")
