"""Hot paths found by profiling the benchmarks, and what fixing them bought (issue 7, item 6).

The "before" figures were measured with the same benchmark on the revision before the fix, on
the same machine; the "after" figure of each entry is the current result named by
`benchmark`/`figure`, so the report always shows the fix against today's measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fix:
    where: str
    """File and function."""
    found: str
    """What the profile showed."""
    change: str
    before: str
    """The figure before the fix, with how it was measured."""
    after: str
    """The figure after the fix, measured the same way."""
    commit: str = ""


FIXES: list[Fix] = [
    Fix(
        where="policy/matching.py `match`, `satisfying`; policy/request.py `SecurityRequest`",
        found=(
            "on `--only core`, 80 % of `match` was the generator walking `for e in Entity for p "
            "in Property` (14 cells) per (request, profile) pair: iterating an Enum costs ~1 us "
            "per pass, 8 passes per match; `satisfying` built every `Match` with its unmet "
            "cells only to keep the satisfied names."
        ),
        change=(
            "the requested cells in the paper's order are computed once per request "
            "(`SecurityRequest.ordered_cells`) and the `Yes` cells once per profile "
            "(`ProfileCapabilities.protected`); `match` is a subset test, and walks the "
            "request's own cells only when it fails; `satisfying` uses the new boolean "
            "`satisfies` and builds no reasons. Same answers (tests/unit/policy and the "
            "benchmark's own comparison with the baseline)."
        ),
        before=(
            "quick run, shared machine (load ~2.3 on 2 cores), medians of 3 alternating runs "
            "of revision 9640654: 79,000 match evaluations/s; fleet placement 495 us per VM "
            "on 200 nodes"
        ),
        after=(
            "same runs, working tree: 250,000 evaluations/s (3.1x); 74 us per VM (6.7x, "
            "together with the next entry)"
        ),
    ),
    Fix(
        where="policy/placement.py `NodeView.verified`",
        found=(
            "on `--only core`, 64 % of fleet placement was `verified_profiles` re-parsing "
            "every node's labels for every VM in `eligible_nodes`."
        ),
        change=(
            "`verified` is a `cached_property` (a node's labels never change in place; a label "
            "event builds a new NodeView). Made by the operator's author in the same tree."
        ),
        before="495 us per VM on 200 nodes (as above)",
        after="360-455 us per VM with this change alone; 74 us with both",
    ),
]


def render() -> list[str]:
    lines = ["## Profiling and fixes (before / after)", ""]
    if not FIXES:
        return [*lines, "No hot path fixed yet.", ""]
    lines += [
        "Profiles taken with pyinstrument on the benchmark named in each entry. The before and "
        "after figures come from the same benchmark on the same machine, before and after the "
        "change.",
        "",
    ]
    for fix in FIXES:
        lines += [
            f"### {fix.where}",
            "",
            f"* **Profile**: {fix.found}",
            f"* **Change**: {fix.change}" + (f" ({fix.commit})" if fix.commit else ""),
            f"* **Before**: {fix.before}",
            f"* **After**: {fix.after}",
            "",
        ]
    return lines
