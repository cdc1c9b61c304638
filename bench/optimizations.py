"""Hot paths found by profiling the benchmarks, what was changed, and the open findings.

No figure is typed here. The history of fixes cites result files of earlier runs, archived
under `bench/results/history/<revision>/` exactly as those runs wrote them; the report reads
the cited figures from those files and says which revision (and whether its tree was clean)
they come from. The figures measured before each fix were not kept as result files, so
none is shown: the text says what the profile showed, not by how much.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import fmt


@dataclass(frozen=True)
class Cite:
    """Figures of an archived result file: `history/<revision>/<file>`."""

    revision: str
    file: str
    figures: tuple[str, ...]


@dataclass(frozen=True)
class Fix:
    where: str
    """File and function."""
    found: str
    """What the profile showed."""
    change: str
    after: Cite | None = None
    """The run after the fix, if its result file was kept."""


FIXES: list[Fix] = [
    Fix(
        where="policy/matching.py `match`, `satisfying`; policy/request.py `SecurityRequest`",
        found=(
            "on `--only core`, most of `match` was the generator walking every (entity, "
            "property) cell per (request, profile) pair, iterating Enums on every pass; "
            "`satisfying` built every `Match` with its unmet cells only to keep the names."
        ),
        change=(
            "the requested cells are computed once per request (`SecurityRequest."
            "ordered_cells`) and the `Yes` cells once per profile (`ProfileCapabilities."
            "protected`); `match` is a subset test; `satisfying` uses the boolean `satisfies`. "
            "Same answers (tests/unit/policy and the benchmark's comparison with its baseline)."
        ),
        after=Cite("f3269c8-dirty", "core.json", ("match_rate", "placement_per_vm")),
    ),
    Fix(
        where="policy/placement.py `NodeView.verified`",
        found=(
            "on `--only core`, most of fleet placement was `verified_profiles` re-parsing "
            "every node's labels for every VM in `eligible_nodes`."
        ),
        change=(
            "`verified` is a `cached_property` (a node's labels never change in place; a "
            "label event builds a new NodeView)."
        ),
        after=Cite("f3269c8-dirty", "core.json", ("placement_per_vm",)),
    ),
    Fix(
        where="adapters/controller.py `Controller._plan_and_execute` (migration slots)",
        found=(
            "`--only fanout`'s peak-in-flight count exceeded the per-node migration budget: "
            "a granted migration counted as in flight only once its VMIM was watched back, so "
            "batches planned while create calls were pending handed the same slots out again."
        ),
        change=(
            "a granted migration holds its slot from the grant until its create call "
            "finished (`_dispatched`, added to `World.in_flight()` for every batch)."
        ),
        after=Cite("f3269c8-dirty", "fanout.json", ("all_created",)),
    ),
    Fix(
        where="sandbox/kubevirt_sim.py `KubeVirtSimulator._write_vm_status`",
        found=(
            "py-spy during `--only scale`: the simulator's thread spent most of its time in "
            "status merge patches; the VM's old Ready condition was dropped before "
            "`_set_condition`, so every pass rewrote every VM's status, each echoed to the "
            "operator as a VM event."
        ),
        change="keep the old conditions for `_set_condition`.",
        after=Cite("f3269c8-dirty", "scale.json", ()),
    ),
    Fix(
        where="verifier/controller.py `Verifier._work` (a single worker thread)",
        found=(
            "`--only attestation`: the verifier's CPU per quote was far below the time per "
            "node of a burst: one worker did each node's status write synchronously and "
            "waited on the apiserver most of the time."
        ),
        change=(
            "`--workers` threads (chart `verifier.workers`) take keys from the WorkQueue, "
            "which keeps a 'processing' set; two nodes presenting one EK are judged one after "
            "the other (striped lock on the EK fingerprint, unit-tested)."
        ),
        after=Cite(
            "2d7d8dc-dirty", "attestation.json", ("verifier_throughput_8", "verifier_throughput_32")
        ),
    ),
    Fix(
        where="sandbox/kubevirt_sim.py `KubeVirtSimulator._loop`",
        found=(
            "an operator log with timestamps per watch event: most of the time from the VM "
            "affinity patch to the VMI carrying it was the simulator's fixed coalescing "
            "sleep after every wake-up, a delay KubeVirt's workqueues do not have."
        ),
        change="coalesce for about as long as the last pass took.",
        after=Cite("1b36f82", "reaction.json", ("raise_to_vmim",)),
    ),
    Fix(
        where="node-agent/sod_node_agent/schedule.py `plan` with `--interval 0`",
        found="waiting for a nonce re-read the claims in a busy loop, saturating the machine.",
        change=(
            "waiting for a new nonce waits for the watch or the claims poll; the interval "
            "only paces answers (unit-tested)."
        ),
    ),
    Fix(
        where="sandbox/kubeapi.py `KubeApi.watch`",
        found=(
            "after `close_watches()` the aborted stream's connection went back into the pool "
            "and the next request read leftover chunk bytes (`BadStatusLine` in a loop)."
        ),
        change="a stream that did not end cleanly closes its connection before releasing it.",
    ),
]


@dataclass(frozen=True)
class Finding:
    where: str
    measured: str
    proposal: str
    cite: Cite | None = None


OPEN: list[Finding] = [
    Finding(
        where="policy/plan.py `NodeSnapshot.eligible` in full passes",
        measured=(
            "`--only scale`: py-spy puts most of a full pass in `eligible` -> `term_matches` "
            "over every node of the satisfying profiles, for every SecureVM, although most "
            "SecureVMs share the same (satisfying profiles, tenant terms)."
        ),
        proposal="memoize `eligible` per snapshot by (satisfying profiles, tenant terms).",
        cite=Cite("f3269c8-dirty", "scale.json", ()),
    ),
    Finding(
        where="kopf diffbase on every watch event (adapters/runtime.py `configure_kopf`)",
        measured=(
            "py-spy of the operator converging a fleet: a visible share of its samples in "
            "`AnnotationsDiffBaseStorage.build` (a deepcopy of every body of every event), "
            "which only change-detecting handlers need."
        ),
        proposal="a no-op diffbase storage if kopf does not skip it by itself.",
    ),
    Finding(
        where="kube-apiserver + etcd per verified quote (verifier throughput)",
        measured=(
            "`--only attestation` with the agents paused: kube-apiserver and etcd spend more "
            "CPU per verified quote than the verifier (the figures are in the attestation "
            "section's notes): the NodeAttestation status write is the ceiling on this machine."
        ),
        proposal=(
            "shrink the per-round write (verdicts only for profiles with an attestation "
            "policy, a merge patch of `evidence` and `challenge`), then measure again."
        ),
    ),
    Finding(
        where="policy/relocation.py (request raised -> VMIM)",
        measured=(
            "an operator log of one raise trial: the status write, the VM patch, KubeVirt "
            "copying the affinity and the status recording the migration run in sequence "
            "before the VMIM is created."
        ),
        proposal=(
            "record the relocation in the first status write, with the affinity patch; a "
            "concurrent variant was tried and withdrawn (an adopted SecureVM's status stopped "
            "updating in tests/e2e/test_reliability_authz.py, root cause not found)."
        ),
    ),
]


def _cited(history: Path | None, cite: Cite) -> str:
    """What an archived result file says, read from the file (never typed here)."""
    path = f"bench/results/history/{cite.revision}/{cite.file}"
    if history is None or not (history / cite.revision / cite.file).is_file():
        return f"`{path}` (not found: the citation is broken)"
    doc: dict[str, Any] = json.loads((history / cite.revision / cite.file).read_text())
    git = str((doc.get("environment") or {}).get("git") or "unknown revision")
    figures = {f["id"]: f for f in doc.get("figures", [])}
    parts = []
    for fid in cite.figures:
        fig = figures.get(fid)
        if fig is None:
            parts.append(f"`{fid}`: not in the file")
            continue
        parts.append(f"{fig['label']}: median {fmt(fig['summary']['median'])} {fig['unit']}")
    read = ("; " + "; ".join(parts)) if parts else ""
    return f"`{path}` (revision {git}{read})"


def render(history: Path | None = None) -> list[str]:
    lines = [
        "## History: profiling and fixes (earlier revisions)",
        "",
        "Not figures of this commit. Each entry says what a profile (pyinstrument for the "
        "pure core, py-spy for processes) showed and what was changed; where the run after "
        "the fix was kept, its result file in `bench/results/history/` is cited and the "
        "figures shown are read from it. Runs before the fixes were not kept, so no "
        "before/after ratio is claimed.",
        "",
    ]
    for fix in FIXES:
        after = _cited(history, fix.after) if fix.after else "no result file was kept"
        lines += [
            f"### {fix.where}",
            "",
            f"* **Profile**: {fix.found}",
            f"* **Change**: {fix.change}",
            f"* **Run after the fix**: {after}",
            "",
        ]
    lines += ["## Found and not fixed here (proposals for the owners)", ""]
    for f in OPEN:
        cite = f" Run: {_cited(history, f.cite)}." if f.cite else ""
        lines += [f"* **{f.where}**: {f.measured}{cite} *Proposal*: {f.proposal}", ""]
    return lines
