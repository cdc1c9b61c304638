"""Does a profile satisfy a request? (Semantics fixed in ARCHITECTURE.md, "Semantics".)

1. A profile satisfies a request when every requested (entity, property) cell is `Yes` in the
   profile and the profile's scope covers the request's scope.
2. No implicit union: a node satisfies a request when ONE profile verified on it does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.vocabulary import Cell, Entity, Property, Scope, scope_covers
from sod_operator.policy.request import RequestCell, SecurityRequest
from sod_operator.policy.vmsettings import NONE, VMSettings


@dataclass(frozen=True)
class ProfileCapabilities:
    """A profile reduced to what matching needs: its Table III row, scope and cost."""

    name: str
    cells: Mapping[RequestCell, Cell]
    scope: Scope
    cost: int = 1
    vm: VMSettings = NONE
    """What the VM must carry for the protections to hold (`spec.vmRequirements`)."""

    @cached_property
    def protected(self) -> frozenset[RequestCell]:
        """The cells that are `Yes` (computed once: matching tests requests against it)."""
        return frozenset(c for c, v in self.cells.items() if v is Cell.YES)

    def cell(self, entity: Entity, prop: Property) -> Cell:
        # An entity the profile does not list is not protected from.
        return self.cells.get((entity, prop), Cell.NO)

    @classmethod
    def from_spec(cls, name: str, spec: ServerSecurityProfileSpec) -> ProfileCapabilities:
        cells: dict[RequestCell, Cell] = {}
        for row in spec.protections:
            cells[(row.entity, Property.CONFIDENTIALITY)] = row.confidentiality
            cells[(row.entity, Property.INTEGRITY)] = row.integrity
        return cls(
            name=name,
            cells=cells,
            scope=spec.scope,
            cost=spec.cost,
            vm=VMSettings.from_spec(spec.vm_requirements),
        )


@dataclass(frozen=True)
class UnmetCell:
    entity: Entity
    prop: Property
    offered: Cell

    def describe(self) -> str:
        return f"{self.entity}/{self.prop}={self.offered}"


@dataclass(frozen=True)
class Match:
    """The result of matching one profile against one request, with every reason it fails."""

    profile: str
    unmet: tuple[UnmetCell, ...]
    scope_gap: Scope | None
    """The profile's scope when it does not cover the requested scope."""

    @property
    def satisfied(self) -> bool:
        return not self.unmet and self.scope_gap is None

    def reasons(self, requested_scope: Scope) -> list[str]:
        out = [f"{u.entity} {u.prop}: profile offers {u.offered}" for u in self.unmet]
        if self.scope_gap is not None:
            out.append(f"scope {self.scope_gap} does not cover requested scope {requested_scope}")
        return out


def match(request: SecurityRequest, profile: ProfileCapabilities) -> Match:
    """Match `profile` against `request`, listing every unmet cell in the paper's order."""
    protected = profile.protected
    if request.cells <= protected:
        unmet: tuple[UnmetCell, ...] = ()
    else:
        offered = profile.cells
        unmet = tuple(
            [
                UnmetCell(e, p, offered.get((e, p), Cell.NO))
                for e, p in request.ordered_cells
                if (e, p) not in protected
            ]
        )
    gap = None if scope_covers(profile.scope, request.scope) else profile.scope
    return Match(profile=profile.name, unmet=unmet, scope_gap=gap)


def match_all(request: SecurityRequest, profiles: Iterable[ProfileCapabilities]) -> list[Match]:
    """Matches for every profile, sorted by profile name."""
    return sorted((match(request, p) for p in profiles), key=lambda m: m.profile)


def satisfies(request: SecurityRequest, profile: ProfileCapabilities) -> bool:
    """`match(request, profile).satisfied`, without collecting the reasons (the hot path)."""
    return request.cells <= profile.protected and scope_covers(profile.scope, request.scope)


def satisfying(request: SecurityRequest, profiles: Iterable[ProfileCapabilities]) -> list[str]:
    """Names of the profiles that satisfy `request`, sorted."""
    return sorted(p.name for p in profiles if satisfies(request, p))
