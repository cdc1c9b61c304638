"""`sodctl explain svm NAME [-n NS] [--kubeconfig FILE] [-o text|json]` against a cluster.

The first thing a tenant runs when a VM is `Pending`: the request matrix (Table II row), which
profiles satisfy it and what the others lack, why the VM is on its node (the verified profile
that justifies it), which nodes qualify, and for every other node the cells or labels it
lacks. Read-only: it lists nodes, profiles and packages and reads the SecureVM and its VMI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sod_operator.api.v1alpha1.parsing import ManifestError
from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.cli import render
from sod_operator.cli.errors import UsageError
from sod_operator.kube import KUBEVIRT, SOD, ApiError, KubeClient, resource_path
from sod_operator.policy import evidence
from sod_operator.policy.evaluation import resolve
from sod_operator.policy.explain import Explanation, explain, tenant_terms
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.observed import (
    node_from_body,
    package_from_body,
    profile_from_body,
    securevm_from_body,
    vm_from_body,
    vm_spec_affinity,
    vmi_from_body,
)

Json = dict[str, Any]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a SecureVM's placement against a cluster",
        description="Why a SecureVM is where it is, which nodes qualify, what the others lack.",
    )
    p.add_argument("kind", choices=["svm", "securevm", "securevms"], help="what to explain")
    p.add_argument("name", help="the SecureVM's name")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_explain)


def _list(kube: KubeClient, api_version: str, plural: str) -> list[Json]:
    try:
        items = kube.request("GET", resource_path(api_version, plural)).get("items") or []
    except ApiError as err:
        raise UsageError(f"cannot list {plural}: {err.message or err}") from None
    return [i for i in items if isinstance(i, dict)]


def _specs(kube: KubeClient) -> dict[str, ServerSecurityProfileSpec]:
    out = {}
    for obj in _list(kube, SOD, "serversecurityprofiles"):
        try:
            out[obj["metadata"]["name"]] = profile_from_body(obj)
        except ManifestError:
            continue  # the operator ignores it too
    return out


def _packages(kube: KubeClient) -> dict[str, SecurityPackageSpec]:
    out = {}
    for obj in _list(kube, SOD, "securitypackages"):
        try:
            out[obj["metadata"]["name"]] = package_from_body(obj)
        except ManifestError:
            continue
    return out


def gather(
    kube: KubeClient, namespace: str, name: str
) -> tuple[Json, Explanation, dict[str, ServerSecurityProfileSpec]]:
    try:
        body = kube.request("GET", resource_path(SOD, "securevms", namespace, name))
    except ApiError as err:
        if err.not_found:
            raise UsageError(f"SecureVM {namespace}/{name} not found") from None
        raise UsageError(f"cannot read SecureVM {namespace}/{name}: {err.message or err}") from None
    view = securevm_from_body(body)
    if view.spec is None:
        raise UsageError(f"SecureVM {namespace}/{name} has an invalid spec: {view.spec_error}")
    specs = _specs(kube)
    catalog = {n: ProfileCapabilities.from_spec(n, spec) for n, spec in specs.items()}
    resolution = resolve(view.spec.security, _packages(kube), catalog.values())
    affinity: Json | None = None
    vm_node = None
    for plural in ("virtualmachines", "virtualmachineinstances"):
        try:
            obj = kube.request("GET", resource_path(KUBEVIRT, plural, namespace, view.vm_name))
        except ApiError:
            continue
        if plural == "virtualmachines":
            affinity = vm_from_body(obj).template_affinity
        else:
            # KubeVirt's reserved label, not status.nodeName (tenant-writable, issue 19).
            vm_node = vmi_from_body(obj).node_name
    if view.spec.template is not None:
        affinity = vm_spec_affinity(view.spec.template)
    nodes = [node_from_body(n) for n in _list(kube, "v1", "nodes")]
    ex = explain(resolution, catalog, nodes, terms=tenant_terms(affinity), vm_node=vm_node)
    return body, ex, specs


def text(body: Json, ex: Explanation, specs: dict[str, ServerSecurityProfileSpec]) -> str:
    meta, status = body["metadata"], body.get("status") or {}
    res = ex.resolution
    lines = [f"SecureVM {meta['namespace']}/{meta['name']}"]
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready:
        lines.append(f"  Ready={ready['status']} ({ready['reason']}): {ready.get('message', '')}")
    if res.request is None:
        lines += ["", f"The request cannot be resolved: {res.error}"]
        return "\n".join(lines)
    lines += [
        "",
        "Request (Table II row):",
        render.match_report(meta["name"], res.request, res.matches),
    ]
    lines.append("")
    if ex.vm_node:
        verdict = next((v for v in ex.nodes if v.node == ex.vm_node), None)
        if verdict is not None and verdict.via:
            lines.append(
                f"The VM runs on {ex.vm_node}: its verified profile {verdict.via} "
                "satisfies the request."
            )
        else:
            lines.append(f"The VM runs on {ex.vm_node}, which does NOT satisfy the request.")
    else:
        lines.append("The VM is not running on any node.")
    qualifying = ex.qualifying
    lines.append(f"Nodes that qualify: {len(qualifying)} of {len(ex.nodes)}")
    width = max([len(v.node) for v in ex.nodes] or [4])
    for v in ex.nodes:
        mark = " *" if v.runs_vm else "  "
        if v.qualifies:
            lines.append(f"{mark}{v.node.ljust(width)}  qualifies via {v.via}")
        else:
            lines.append(f"{mark}{v.node.ljust(width)}  lacks: " + " | ".join(v.lacks))
    lines += _class_and_evidence(status, ex, specs)
    rel = status.get("relocation")
    if rel:
        lines += [
            "",
            f"Relocation in progress: {rel.get('trigger')} from {rel.get('fromNode')}"
            f" (migration {rel.get('migrationName') or '-'}, attempt {rel.get('attempt')})",
        ]
    return "\n".join(lines)


def _class_and_evidence(
    status: Json, ex: Explanation, specs: dict[str, ServerSecurityProfileSpec]
) -> list[str]:
    """The class the operator chose (issue 14) and, per satisfying profile, what its evidence
    proves, what the node only reports, and what nothing proves."""
    lines = []
    chosen = status.get("placementClass")
    if chosen:
        lines += [
            "",
            f"Placement class: [{', '.join(chosen.get('profiles') or [])}]; the VM carries "
            f"{chosen.get('vmSettings')}",
        ]
    satisfying = [p for p in ex.resolution.satisfying if p in specs]
    if satisfying:
        lines += ["", "Evidence behind each satisfying profile:"]
        for name in satisfying:
            lines += evidence.describe(name, specs[name])
    return lines


def as_json(body: Json, ex: Explanation) -> Json:
    res = ex.resolution
    return {
        "secureVM": f"{body['metadata']['namespace']}/{body['metadata']['name']}",
        "request": render.match_json(body["metadata"]["name"], res.request, res.matches)
        if res.request
        else None,
        "error": str(res.error) if res.error else None,
        "vmNode": ex.vm_node,
        "placementClass": (body.get("status") or {}).get("placementClass"),
        "qualifyingNodes": ex.qualifying,
        "nodes": [
            {
                "name": v.node,
                "qualifies": v.qualifies,
                "via": v.via,
                "verifiedProfiles": list(v.verified),
                "lacks": list(v.lacks),
            }
            for v in ex.nodes
        ],
    }


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        kube = KubeClient(args.kubeconfig, context=args.context, user_agent="sodctl")
    except Exception as err:
        raise UsageError(f"cannot load a kubeconfig: {err}") from None
    body, ex, specs = gather(kube, args.namespace, args.name)
    if args.output == "json":
        print(json.dumps(as_json(body, ex), indent=2))
    else:
        print(text(body, ex, specs))
    return 0
