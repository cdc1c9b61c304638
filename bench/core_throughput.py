"""Core throughput (issue 7, item 4): match evaluations per second and placement of a whole fleet
on the pure core (`sod_operator.policy`), against a straightforward implementation of the same
semantics written here.

The baseline works on the raw dicts of strings the apiserver hands out and re-resolves the
request for every (request, profile) pair and every (VM, node) pair, as a first
implementation of ARCHITECTURE.md "Semantics" would. Both implementations' answers are
compared on the whole input before anything is timed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping
from typing import Any

from bench import deps, workload
from bench.stats import Figure, Result

NAME = "core"
TITLE = "Core throughput"

Json = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# The baseline: ARCHITECTURE.md "Semantics" over dicts of strings, nothing precomputed.

ENTITIES = ["SameApp", "OtherApps", "GuestOS", "OtherVMs", "Hypervisor", "Hardware", "CloudManager"]
PROPERTIES = ["Confidentiality", "Integrity"]
OPTION_ENTITY = {
    "Basic": "OtherVMs",
    "HypervisorProtection": "Hypervisor",
    "HardwareProtection": "Hardware",
    "CloudManagerProtection": "CloudManager",
    "GuestOSProtection": "GuestOS",
    "AppsProtection": "OtherApps",
    "SameAppProtection": "SameApp",
}
SCOPE_COVERS = {
    "FullVM": ["FullVM", "DataAndApp", "App", "Data", "DataAndTSM"],
    "DataAndApp": ["DataAndApp", "App", "Data"],
    "App": ["App"],
    "Data": ["Data"],
    "DataAndTSM": ["DataAndTSM", "Data"],
}
LABEL_PREFIX = "sod.node-restriction.kubernetes.io/profile."
NO_NODE_LABEL = "sod.node-restriction.kubernetes.io/no-compliant-node"


def naive_resolve(security: Json, packages: Mapping[str, Json]) -> tuple[list[list[str]], str]:
    """The requested (entity, property) cells and scope of a raw `spec.security`."""
    if "package" in security:
        pkg = packages[security["package"]]
        options, props, scope = pkg["options"], pkg.get("properties"), pkg.get("scope")
    elif "matrix" in security:
        cells = []
        for row in security["matrix"]:
            for p in row["properties"]:
                if [row["entity"], p] not in cells:
                    cells.append([row["entity"], p])
        return cells, security.get("scope") or "FullVM"
    else:
        options, props, scope = (
            security["options"],
            security.get("properties"),
            security.get("scope"),
        )
    cells = []
    for o in options:
        for p in props or PROPERTIES:
            if [OPTION_ENTITY[o], p] not in cells:
                cells.append([OPTION_ENTITY[o], p])
    return cells, scope or "FullVM"


def naive_cell(profile: Json, entity: str, prop: str) -> str:
    for row in profile["protections"]:
        if row["entity"] == entity:
            return str(row["confidentiality" if prop == "Confidentiality" else "integrity"])
    return "No"


def naive_match(
    security: Json, packages: Mapping[str, Json], profile: Json
) -> tuple[bool, list[tuple[str, str, str]], str | None]:
    """(satisfied, unmet cells in the paper's order, the profile's scope if it falls short)."""
    cells, scope = naive_resolve(security, packages)
    unmet = []
    for e in ENTITIES:
        for p in PROPERTIES:
            if [e, p] in cells:
                offered = naive_cell(profile, e, p)
                if offered != "Yes":
                    unmet.append((e, p, offered))
    gap = None if scope in SCOPE_COVERS[profile["scope"]] else profile["scope"]
    return (not unmet and gap is None), unmet, gap


def naive_satisfying(
    security: Json, packages: Mapping[str, Json], profiles: Mapping[str, Json]
) -> list[str]:
    return sorted(n for n, p in profiles.items() if naive_match(security, packages, p)[0])


def naive_expr(expr: Json, labels: Mapping[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False


def naive_node_ok(
    vm: workload.VMDoc,
    node: workload.NodeDoc,
    packages: Mapping[str, Json],
    profiles: Mapping[str, Json],
) -> bool:
    """Does `node` admit `vm`: one verified profile on it satisfies, and the tenant's terms hold."""
    if not node.schedulable:
        return False
    ok = False
    for key, value in node.labels.items():
        if key.startswith(LABEL_PREFIX) and value == "verified":
            name = key[len(LABEL_PREFIX) :]
            if name in profiles and naive_match(vm.security, packages, profiles[name])[0]:
                ok = True
                break
    if not ok:
        return False
    terms = (
        ((vm.affinity or {}).get("nodeAffinity") or {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    if terms:
        return any(all(naive_expr(e, node.labels) for e in t["matchExpressions"]) for t in terms)
    return True


def naive_affinity(vm: workload.VMDoc, satisfying: list[str], profiles: Mapping[str, Json]) -> Json:
    """The tenant's affinity ANDed with one term per satisfying profile, cheapest preferred."""
    node_aff = dict((vm.affinity or {}).get("nodeAffinity") or {})
    tenant_terms = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get(
        "nodeSelectorTerms", []
    )
    ours = [
        {"matchExpressions": [{"key": LABEL_PREFIX + p, "operator": "In", "values": ["verified"]}]}
        for p in sorted(satisfying)
    ] or [{"matchExpressions": [{"key": NO_NODE_LABEL, "operator": "Exists"}]}]
    if tenant_terms:
        terms = [
            {"matchExpressions": [*t.get("matchExpressions", []), *o["matchExpressions"]]}
            for t in tenant_terms
            for o in ours
        ]
    else:
        terms = ours
    out_node: Json = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
    }
    prefs: list[Json] = []
    costs = [int(profiles[s].get("cost", 1)) for s in satisfying]
    if costs:
        floor = min(costs)
        dearer = sorted(n for n, p in profiles.items() if int(p.get("cost", 1)) > floor)
        if dearer:
            top = max(int(profiles[n].get("cost", 1)) for n in dearer)
            for n in dearer:
                cost = int(profiles[n].get("cost", 1))
                prefs.append(
                    {
                        "weight": max(1, min(100, round(100 * (cost - floor) / (top - floor)))),
                        "preference": {
                            "matchExpressions": [
                                {"key": LABEL_PREFIX + n, "operator": "DoesNotExist"}
                            ]
                        },
                    }
                )
    tenant_prefs = node_aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    if prefs or tenant_prefs:
        out_node["preferredDuringSchedulingIgnoredDuringExecution"] = [*prefs, *tenant_prefs]
    out = {k: v for k, v in (vm.affinity or {}).items() if k != "nodeAffinity"}
    out["nodeAffinity"] = out_node
    return out


def naive_place(
    vm: workload.VMDoc,
    nodes: list[workload.NodeDoc],
    packages: Mapping[str, Json],
    profiles: Mapping[str, Json],
) -> tuple[list[str], Json, list[str]]:
    satisfying = naive_satisfying(vm.security, packages, profiles)
    eligible = sorted(n.name for n in nodes if naive_node_ok(vm, n, packages, profiles))
    return satisfying, naive_affinity(vm, satisfying, profiles), eligible


# ---------------------------------------------------------------------------------------------
# The project's core.


class Core:
    """The inputs of the pure core, parsed once as the operator holds them."""

    def __init__(self, profiles: Mapping[str, Json], packages: Mapping[str, Json]) -> None:
        from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
        from sod_operator.api.v1alpha1.security import SecurityPackageSpec
        from sod_operator.policy.matching import ProfileCapabilities

        self.catalog = [
            ProfileCapabilities.from_spec(n, ServerSecurityProfileSpec.model_validate(s))
            for n, s in sorted(profiles.items())
        ]
        self.packages = {n: SecurityPackageSpec.model_validate(s) for n, s in packages.items()}

    def parse(self, security: Json) -> Any:
        from sod_operator.api.v1alpha1.security import SecurityRequestSpec

        return SecurityRequestSpec.model_validate(security)

    def match_all(self, spec: Any) -> list[Any]:
        """What is timed: resolve the request once, match it against every profile."""
        from sod_operator.policy.matching import match_all
        from sod_operator.policy.request import resolve_request

        return match_all(resolve_request(spec, self.packages), self.catalog)

    def verdicts(self, spec: Any) -> list[tuple[bool, list[tuple[str, str, str]], str | None]]:
        """`match_all` in the baseline's shape, to compare the answers (not timed)."""
        return [
            (
                m.satisfied,
                [(str(u.entity), str(u.prop), str(u.offered)) for u in m.unmet],
                None if m.scope_gap is None else str(m.scope_gap),
            )
            for m in self.match_all(spec)
        ]

    def place(
        self, spec: Any, affinity: Json | None, nodes: list[Any]
    ) -> tuple[list[str], Json, list[str]]:
        from sod_operator.policy.matching import satisfying
        from sod_operator.policy.placement import desired_affinity, eligible_nodes
        from sod_operator.policy.request import resolve_request

        request = resolve_request(spec, self.packages)
        sat = satisfying(request, self.catalog)
        wanted = desired_affinity(affinity, sat, self.catalog)
        tenant_terms = (
            ((affinity or {}).get("nodeAffinity") or {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [])
        )
        return sat, wanted, eligible_nodes(nodes, sat, tenant_terms)


def _rate(count: int, fn: Any) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def _seconds(fn: Any) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def missing() -> str | None:
    return deps.reason(
        [
            "sod_operator.policy.matching",
            "sod_operator.policy.placement",
            "sod_operator.policy.request",
        ]
    )


def run(quick: bool = False) -> Result:
    from sod_operator.policy.placement import NodeView

    profiles = workload.profile_docs()
    packages = workload.package_docs()
    core = Core(profiles, packages)
    n_requests = 300 if quick else 2000
    n_nodes = 200
    n_fleet = 100 if quick else 1000
    runs = 5 if quick else 9
    base_runs = 3 if quick else 5

    requests = [vm.security for vm in workload.fleet(n_requests, sorted(packages), seed=3)]
    specs = [core.parse(s) for s in requests]
    pairs = len(requests) * len(profiles)
    names = sorted(profiles)

    # Identical answers first: every (request, profile) verdict and unmet list.
    for raw, spec in zip(requests, specs, strict=True):
        ours = core.verdicts(spec)
        theirs = [naive_match(raw, packages, profiles[n]) for n in names]
        if ours != theirs:
            raise AssertionError(f"core and baseline disagree on {raw}: {ours} != {theirs}")

    def ours_match() -> None:
        for spec in specs:
            core.match_all(spec)

    def naive_match_pass() -> None:
        for raw in requests:
            for n in names:
                naive_match(raw, packages, profiles[n])

    def ours_match_with_parse() -> None:
        for raw in requests:
            core.match_all(core.parse(raw))

    ours_match()
    naive_match_pass()
    match_ours = [_rate(pairs, ours_match) for _ in range(runs)]
    match_parse = [_rate(pairs, ours_match_with_parse) for _ in range(runs)]
    match_base = [_rate(pairs, naive_match_pass) for _ in range(base_runs)]

    node_docs = workload.nodes(n_nodes, names)
    views = [NodeView(n.name, n.labels, n.schedulable) for n in node_docs]
    vms = workload.fleet(n_fleet, sorted(packages))
    vm_specs = [core.parse(vm.security) for vm in vms]
    satisfiable = 0
    for vm, spec in zip(vms, vm_specs, strict=True):
        ours_p = core.place(spec, vm.affinity, views)
        theirs_p = naive_place(vm, node_docs, packages, profiles)
        if ours_p != theirs_p:
            raise AssertionError(f"placement of {vm.name} differs: {ours_p} != {theirs_p}")
        satisfiable += bool(ours_p[2])

    def ours_fleet() -> None:
        for vm, spec in zip(vms, vm_specs, strict=True):
            core.place(spec, vm.affinity, views)

    def naive_fleet() -> None:
        for vm in vms:
            naive_place(vm, node_docs, packages, profiles)

    ours_fleet()
    fleet_ours = [_seconds(ours_fleet) * 1000 for _ in range(runs)]
    fleet_base = [_seconds(naive_fleet) * 1000 for _ in range(base_runs)]

    result = Result(name=NAME, title=TITLE)
    result.params = {
        "profiles": len(profiles),
        "requests": n_requests,
        "nodes": n_nodes,
        "fleet_vms": n_fleet,
        "runs": runs,
        "baseline_runs": base_runs,
    }
    result.method = f"""\
In-process, no cluster: the pure core of `sod_operator.policy` on a seeded synthetic workload
(`bench/workload.py`): the {len(profiles)} example profiles, the example packages, {n_requests}
tenant requests (70 % options, 15 % packages, 15 % explicit matrices, every scope) and a fleet
of {n_fleet} SecureVMs on {n_nodes} nodes (each node verified for 0-2 profiles, 5 % unschedulable,
5 % carrying a non-`verified` profile label; a fifth of the VMs with a zone constraint of their
own). One sample is one pass over the whole input.

* **Match evaluations**: one evaluation is one (request, profile) pair, giving the verdict and
  every unmet cell. Ours: `resolve_request` once per request, then `match_all` over the catalog
  (the request is a parsed `SecurityRequestSpec`, as the operator holds it). Baseline: the same
  semantics over the raw dicts of strings, re-resolving the request for every pair and looking
  cells up by scanning the profile's rows.
* **Fleet placement**: per VM, the satisfying profiles, the desired VM affinity and the
  eligible nodes. Ours: `resolve_request` + `satisfying` + `desired_affinity` +
  `eligible_nodes`. Baseline: per VM and node, re-resolve and re-match every verified profile on
  the node, then build the affinity from the raw dicts.
* Before timing, both implementations were run on the whole input and gave identical answers
  ({pairs:,} verdicts with their unmet cells; {n_fleet} placements, of which {satisfiable} have an
  eligible node).
"""
    result.figures = [
        Figure(
            id="match_rate",
            label="match evaluations (request x profile)",
            unit="evals/s",
            better="higher",
            samples=match_ours,
            baseline_label="nested loops over dicts, re-resolving per pair",
            baseline_samples=match_base,
        ),
        Figure(
            id="match_rate_with_parse",
            label="match evaluations incl. pydantic parsing of each request",
            unit="evals/s",
            better="higher",
            samples=match_parse,
            baseline_label="nested loops over dicts, re-resolving per pair",
            baseline_samples=match_base,
            note="ours also validates `spec.security` with pydantic once per request "
            "(as on every SecureVM event); the baseline validates nothing.",
        ),
        Figure(
            id="fleet_placement",
            label=f"placement of {n_fleet} VMs on {n_nodes} nodes",
            unit="ms",
            better="lower",
            samples=fleet_ours,
            baseline_label="per (VM, node) re-resolve and re-match",
            baseline_samples=fleet_base,
        ),
        Figure(
            id="placement_per_vm",
            label=f"placement cost per VM ({n_nodes} nodes)",
            unit="us",
            better="lower",
            samples=[ms * 1000 / n_fleet for ms in fleet_ours],
            baseline_label="per (VM, node) re-resolve and re-match",
            baseline_samples=[ms * 1000 / n_fleet for ms in fleet_base],
        ),
    ]
    return result
