"""Text renderings of Table II rows, Table III and match results for a terminal."""

from __future__ import annotations

from collections.abc import Sequence

from sod_operator.api.vocabulary import Cell, Entity, Property
from sod_operator.policy.matching import Match, ProfileCapabilities
from sod_operator.policy.request import SecurityRequest
from sod_operator.policy.vmsettings import NONE

_PROPS = (Property.CONFIDENTIALITY, Property.INTEGRITY)
_CELL_TEXT = {Cell.YES: "Yes", Cell.NO: "No", Cell.NOT_APPLICABLE: "n-a"}


def _grid(first_header: str, rows: Sequence[tuple[str, Sequence[str], str]], last: str) -> str:
    """Entity columns with a C and an I sub-column each, like the paper's tables."""
    label_w = max([len(first_header), *(len(r[0]) for r in rows)])
    col_w = [max(len(e.value), 7) for e in Entity]
    head1 = (
        first_header.ljust(label_w)
        + "  "
        + "  ".join(e.value.ljust(w) for e, w in zip(Entity, col_w, strict=True))
        + "  "
        + last
    )
    cw = [(w - 1) // 2 for w in col_w]
    head2 = (
        " " * label_w
        + "  "
        + "  ".join(
            ("C".ljust(c) + " " + "I".ljust(w - c - 1)) for c, w in zip(cw, col_w, strict=True)
        )
    )
    lines = [head1.rstrip(), head2.rstrip()]
    for label, cells, tail in rows:
        parts = []
        for i, w in enumerate(col_w):
            c, integ = cells[2 * i], cells[2 * i + 1]
            parts.append((c.ljust(cw[i]) + " " + integ).ljust(w))
        lines.append((label.ljust(label_w) + "  " + "  ".join(parts) + "  " + tail).rstrip())
    return "\n".join(lines)


def request_row(label: str, request: SecurityRequest) -> tuple[str, list[str], str]:
    cells = ["√" if (e, p) in request.cells else "x" for e in Entity for p in _PROPS]
    return label, cells, request.scope.value


def table_ii(rows: Sequence[tuple[str, SecurityRequest]]) -> str:
    """Security Request Matrix rows (Table II): √ where protection is requested."""
    return _grid("SecureVM", [request_row(n, r) for n, r in rows], "Scope")


def table_iii(profiles: Sequence[ProfileCapabilities]) -> str:
    """Server Security Capabilities (Table III): Yes, No or n-a per cell, then scope, cost and
    what the VM itself must carry for the cells to hold (`spec.vmRequirements`)."""
    rows = [
        (
            p.name,
            [_CELL_TEXT[p.cell(e, prop)] for e in Entity for prop in _PROPS],
            f"{p.scope.value:<11} {p.cost:<5} {p.vm.describe() if p.vm != NONE else '-'}",
        )
        for p in profiles
    ]
    return _grid("Profile", rows, "Scope       Cost  VM must carry")


def match_report(label: str, request: SecurityRequest, matches: Sequence[Match]) -> str:
    satisfied = [m.profile for m in matches if m.satisfied]
    lines = [
        table_ii([(label, request)]),
        "",
        "Satisfied by: " + (", ".join(satisfied) if satisfied else "no profile (Unsatisfiable)"),
    ]
    others = [m for m in matches if not m.satisfied]
    if others:
        lines.append("Not satisfied by:")
        width = max(len(m.profile) for m in others)
        for m in others:
            lines.append(f"  {m.profile.ljust(width)}  " + "; ".join(m.reasons(request.scope)))
    return "\n".join(lines)


def match_json(label: str, request: SecurityRequest, matches: Sequence[Match]) -> dict[str, object]:
    """The machine-readable match result: `satisfiedBy` sorted, `unmet` per other profile."""
    unmet: dict[str, list[dict[str, str]]] = {}
    for m in matches:
        if m.satisfied:
            continue
        items = [
            {"entity": u.entity.value, "property": u.prop.value, "offered": u.offered.value}
            for u in m.unmet
        ]
        if m.scope_gap is not None:
            items.append({"scope": m.scope_gap.value, "requestedScope": request.scope.value})
        unmet[m.profile] = items
    return {
        "secureVM": label,
        "request": {
            "matrix": [r.model_dump(mode="json", by_alias=True) for r in request.rows()],
            "scope": request.scope.value,
            **({"package": request.package} if request.package else {}),
        },
        "satisfiedBy": sorted(m.profile for m in matches if m.satisfied),
        "unmet": unmet,
    }
