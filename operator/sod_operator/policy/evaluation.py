"""Evaluate a SecureVM's request against the catalog: the resolved row, who satisfies it, gaps.

The result depends only on (request, catalog), so the operator caches it per distinct request:
a fleet of 20,000 SecureVMs typically holds a handful of distinct requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from sod_operator.api.v1alpha1.securevm import ProfileGap, ResolvedRequest, UnmetCell
from sod_operator.api.v1alpha1.security import SecurityPackageSpec, SecurityRequestSpec
from sod_operator.policy.matching import Match, ProfileCapabilities, match_all
from sod_operator.policy.request import RequestError, SecurityRequest, resolve_request

RequestKey = tuple[frozenset[tuple[str, str]], str]
"""A hashable identity of a resolved request: its cells and scope."""


@dataclass(frozen=True)
class Resolution:
    """A request resolved against the catalog (or why it could not be resolved)."""

    request: SecurityRequest | None
    error: RequestError | None = None
    matches: tuple[Match, ...] = ()
    satisfying: tuple[str, ...] = ()

    @property
    def key(self) -> RequestKey | None:
        if self.request is None:
            return None
        return request_key(self.request)

    @cached_property
    def _resolved(self) -> ResolvedRequest | None:
        if self.request is None:
            return None
        return ResolvedRequest(
            matrix=self.request.rows(), scope=self.request.scope, package=self.request.package
        )

    def resolved(self) -> ResolvedRequest | None:
        """The resolved row for status (shared: callers never mutate it)."""
        return self._resolved

    def gaps(self) -> list[ProfileGap]:
        """For each profile that does not satisfy the request, what it lacks (shared, cached)."""
        return list(self._gaps)

    @cached_property
    def _gaps(self) -> tuple[ProfileGap, ...]:
        return tuple(
            [
                ProfileGap(
                    profile=m.profile,
                    cells=[
                        UnmetCell(entity=u.entity, property=u.prop, offered=u.offered)
                        for u in m.unmet
                    ]
                    or None,
                    scope=m.scope_gap,
                )
                for m in self.matches
                if not m.satisfied
            ]
        )

    @cached_property
    def _unsatisfiable_message(self) -> str:
        return self._message()

    def unsatisfiable_message(self) -> str:
        return self._unsatisfiable_message

    def _message(self) -> str:
        """One line per profile: what it lacks (the tenant's first question)."""
        if self.request is None:
            return ""
        if not self.matches:
            return "no ServerSecurityProfile is installed"
        parts = [
            f"{m.profile}: {'; '.join(m.reasons(self.request.scope))}"
            for m in self.matches
            if not m.satisfied
        ]
        return "no profile satisfies the request. " + " | ".join(parts)


def request_key(request: SecurityRequest) -> RequestKey:
    return (frozenset((str(e), str(p)) for e, p in request.cells), str(request.scope))


def evaluate(request: SecurityRequest, catalog: Iterable[ProfileCapabilities]) -> Resolution:
    matches = tuple(match_all(request, catalog))
    return Resolution(
        request=request,
        matches=matches,
        satisfying=tuple(m.profile for m in matches if m.satisfied),
    )


def resolve(
    security: SecurityRequestSpec,
    packages: Mapping[str, SecurityPackageSpec],
    catalog: Iterable[ProfileCapabilities],
) -> Resolution:
    try:
        request = resolve_request(security, packages)
    except RequestError as err:
        return Resolution(request=None, error=err)
    return evaluate(request, catalog)
