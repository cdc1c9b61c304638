"""Bad input against the real apiserver and the running operator (issue 8, item 4).

Hypothesis generates SecureVM, ServerSecurityProfile and SecurityPackage specs from the CRD
schemas (`tests.reliability.manifests`: valid, boundary and invalid variants — unknown enums,
too-long strings, too many items, duplicates in sets and maps, union violations, the
5/6-with-2 conflict, negative, huge and int64-overflowing integers, unknown fields, wrong
types). Each goes to the real apiserver as a server-side dry-run create with strict field
validation (what `kubectl apply` does); the accepted ones are then created for real while
`sod-operator` runs. Checks:

* every rejection names the field and the reason (a `Status` cause with `field` and `reason`,
  or a strict-decoding message naming the unknown field), and the field broken on purpose;
* the offline models (`sodctl`, and the operator's parser) agree with the apiserver: what the
  apiserver rejects they reject, except the documented lenient cases (unknown fields, lax
  int/bool coercion); what it stores they parse;
* nothing the generator broke on purpose is stored;
* every created object is reconciled (SecureVMs: status for their generation; profiles:
  `status.observedGeneration`) without a traceback in the operator, which stays healthy;
* `vmRef` cannot change on update (a CEL transition rule), nor turn into a template.

The seed (`SOD_RELIABILITY_SEED`) and the number of examples per kind
(`SOD_BAD_INPUT_PER_KIND`) are recorded with the figures. Not covered here: sodctl on files
(tests/unit/test_sodctl_fuzz.py), RBAC (test_reliability_authz.py).
"""

from __future__ import annotations

import collections
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from sod_operator.api.v1alpha1.parsing import ManifestError, parse_object
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path

from tests.e2e.harness import condition, wait_for
from tests.e2e.operator_run import OperatorProcess, delete_quietly
from tests.reliability.figures import record
from tests.reliability.manifests import (
    KINDS,
    NAMESPACED,
    Case,
    cases,
    manifest,
    names_field,
    plural,
)

RELIABILITY_ITEM = "4"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

SOD = "sod.dev/v1alpha1"
SEED = int(os.environ.get("SOD_RELIABILITY_SEED", "20260801"))
PER_KIND = int(os.environ.get("SOD_BAD_INPUT_PER_KIND", "180"))
LENIENT_RULES = {"unknownField", "typeCoercible"}
UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
NO_VM_REASONS = {"VirtualMachineRejected", "PackageNotFound", "InvalidRequest"}
SHORT = {"SecureVM": "svm", "ServerSecurityProfile": "prof", "SecurityPackage": "pkg"}


@dataclass
class Outcome:
    case: Case
    body: JsonObj
    status: int = 0
    stored: JsonObj | None = None
    causes: list[JsonObj] = field(default_factory=list)
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.stored is not None


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    return resource_path(SOD, plural(kind), namespace if NAMESPACED[kind] else None, name)


def send(api: KubeApi, body: JsonObj, namespace: str, *, dry_run: bool) -> Outcome:
    kind = body["kind"]
    query: dict[str, str | int | bool] = {"fieldValidation": "Strict"}
    if dry_run:
        query["dryRun"] = "All"
    out = Outcome(Case(kind, body.get("spec"), "", ""), body)
    try:
        out.stored = api.request("POST", _path(kind, namespace), query=query, body=body)
        out.status = 201
    except ApiError as err:
        out.status = err.status
        out.causes = list((err.body.get("details") or {}).get("causes") or [])
        out.message = err.message
    return out


def reported_fields(out: Outcome) -> list[str]:
    fields = [str(c.get("field", "")) for c in out.causes]
    fields += UNKNOWN_FIELD.findall(out.message)
    return [f for f in fields if f and f != "<nil>"]


def rejection_problems(out: Outcome) -> list[str]:
    """Why this rejection does not name the field and the reason, if it does not."""
    if out.status == 422:
        named = [
            c
            for c in out.causes
            if c.get("field") not in (None, "", "<nil>") and c.get("reason") and c.get("message")
        ]
        if not named:
            return [f"422 without a cause naming a field and reason: {out.message}"]
    elif out.status == 400:
        if not UNKNOWN_FIELD.search(out.message):
            return [f"400 that names no field: {out.message}"]
    else:
        return [f"unexpected HTTP {out.status}: {out.message}"]
    v = out.case.violation
    if v is not None and not any(names_field(f, v.field) for f in reported_fields(out)):
        return [f"{out.case.detail}: rejection names {reported_fields(out)}, not {v.field}"]
    return []


def model_error(body: JsonObj) -> ManifestError | None:
    try:
        parse_object(body)
    except ManifestError as err:
        return err
    return None


def agreement_problems(out: Outcome) -> list[str]:
    case, rule = out.case, out.case.violation.rule if out.case.violation else None
    if out.accepted:
        problems = []
        if case.violation is not None:
            problems.append(f"apiserver stored a manifest broken on purpose ({case.detail})")
        assert out.stored is not None
        err = model_error(out.stored)
        if err is not None:
            problems.append(f"the operator's parser rejects a stored object: {err}")
        return problems
    if model_error(out.body) is None and rule not in LENIENT_RULES:
        return [f"the models accept what the apiserver rejects ({case.detail}): {out.message}"]
    return []


def generate(kind: str, probe: Any) -> None:
    @seed(SEED)
    @settings(
        max_examples=PER_KIND,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(kind))
    def run(case: Case) -> None:
        probe(case)

    run()


def long_named_securevms() -> list[tuple[str, JsonObj]]:
    """Valid SecureVMs whose names are legal but long: the VM name, its label value (at most
    63 characters) and its pods' names derive from them."""
    spec = {
        "security": {"options": ["Basic"]},
        "template": {
            "runStrategy": "Halted",
            "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}},
        },
    }
    return [(("n" * (n - 4)) + f"-{n:03d}", spec) for n in (63, 64, 200, 253)]


def test_generated_manifests_against_the_apiserver_and_the_operator(
    kube_api: KubeApi, namespace: str, operator: OperatorProcess
):
    operator.start()
    outcomes: list[Outcome] = []
    counter = iter(range(1_000_000))

    for kind in KINDS:

        def probe(case: Case, kind: str = kind) -> None:
            body = manifest(kind, case.spec, f"fz-{SHORT[kind]}-{next(counter):04d}", namespace)
            out = send(kube_api, body, namespace, dry_run=True)
            out.case = case
            outcomes.append(out)

        generate(kind, probe)
    for name, spec in long_named_securevms():
        body = manifest("SecureVM", spec, name, namespace)
        out = send(kube_api, body, namespace, dry_run=True)
        out.case = Case("SecureVM", spec, "boundary", "atMaxLength@metadata.name")
        outcomes.append(out)

    problems: list[str] = []
    for out in outcomes:
        if not out.accepted:
            problems += rejection_problems(out)
        problems += agreement_problems(out)

    created: list[tuple[str, str]] = []
    try:
        for out in outcomes:
            if out.accepted:
                real = send(kube_api, out.body, namespace, dry_run=False)
                assert real.accepted, f"dry-run accepted but create refused: {real.message}"
                created.append((out.body["kind"], out.body["metadata"]["name"]))
        reconciled = wait_reconciled(kube_api, namespace, created)
        log = operator.log(10_000_000)
        assert operator.proc is not None
        assert operator.proc.poll() is None, f"the operator exited:\n{operator.log()}"
        assert operator._healthy(), "the operator's /healthz fails"
        tracebacks = log.count("Traceback")
        plan_failures = collections.Counter(
            m.group(1) for m in re.finditer(r"executing the plan of \S+ failed: (.{0,60})", log)
        )
        without_vm = securevms_without_vm(kube_api, namespace, created)
        figures(outcomes, created, reconciled, tracebacks, plan_failures, without_vm)
        assert tracebacks == 0, f"tracebacks in the operator log:\n{log[-6000:]}"
        assert not problems, f"{len(problems)} problems, e.g.:\n" + "\n".join(problems[:15])
    finally:
        for kind, name in created:
            if not NAMESPACED[kind]:
                delete_quietly(kube_api, _path(kind, namespace, name))


def securevms_without_vm(
    api: KubeApi, namespace: str, created: list[tuple[str, str]]
) -> dict[str, int]:
    """Template SecureVMs that got no VirtualMachine, by what their `Ready` condition tells the
    tenant: the apiserver refused the VM (KubeVirt's schema: `VirtualMachineRejected`, with its
    message), or the request cannot be resolved. Never "created" (this once claimed the VM was
    created while the operator retried the refused create every 5 s)."""
    out: collections.Counter[str] = collections.Counter()
    for kind, name in created:
        if kind != "SecureVM":
            continue
        svm = api.get(_path(kind, namespace, name))
        if "template" not in svm["spec"]:
            continue
        vm = api.get_or_none(resource_path("kubevirt.io/v1", "virtualmachines", namespace, name))
        if vm is None:
            ready = condition(svm, "Ready") or {}
            assert ready.get("status") == "False", f"{name}: no VM, yet {ready}"
            assert ready.get("reason") in NO_VM_REASONS, f"{name}: no VM, yet {ready}"
            out[str(ready.get("reason"))] += 1
    return dict(out)


def wait_reconciled(api: KubeApi, namespace: str, created: list[tuple[str, str]]) -> int:
    """Every created SecureVM and profile has a status written for its generation."""

    def pending() -> list[str]:
        out = []
        for kind, name in created:
            if kind == "SecurityPackage":
                continue  # no status: the SecureVMs naming it are re-planned instead
            obj = api.get(_path(kind, namespace, name))
            status = obj.get("status") or {}
            done = status.get("observedGeneration") == obj["metadata"]["generation"]
            if kind == "SecureVM":
                done = done and condition(obj, "Ready") is not None
            if not done:
                out.append(f"{kind} {name}")
        return out

    wait_for(pending, lambda p: not p, "every created object reconciled", timeout=180)
    return sum(1 for kind, _ in created if kind != "SecurityPackage")


def figures(
    outcomes: list[Outcome],
    created: list[tuple[str, str]],
    reconciled: int,
    tracebacks: int,
    plan_failures: collections.Counter[str],
    without_vm: dict[str, int],
) -> None:
    by_kind: dict[str, dict[str, int]] = {}
    for out in outcomes:
        k = by_kind.setdefault(out.body["kind"], collections.Counter())
        k["sent"] += 1
        k["accepted" if out.accepted else "rejected"] += 1
        k[f"{out.case.family}:{'accepted' if out.accepted else 'rejected'}"] += 1
    rules = collections.Counter(
        o.case.detail.split("@")[0] for o in outcomes if o.case.violation is not None
    )
    record(
        "4",
        "manifests vs real apiserver (dry-run, then create) and the operator",
        len(outcomes),
        f"all {sum(not o.accepted for o in outcomes)} rejections name field and reason; "
        f"{len(created)} created, {reconciled} with status reconciled, {tracebacks} tracebacks",
        seed=SEED,
        per_kind={k: dict(v) for k, v in by_kind.items()},
        broken_on_purpose_by_rule=dict(rules),
        handled_plan_failures=dict(plan_failures),
        template_securevms_without_vm=without_vm,
    )


@pytest.mark.parametrize(
    ("before", "after", "field_path"),
    [
        ({"vmRef": {"name": "vm-a"}}, {"vmRef": {"name": "vm-b"}}, "spec.vmRef"),
        ({"vmRef": {"name": "vm-a"}}, {"vmRef": None, "template": {}}, "spec.vmRef"),
        ({"template": {}}, {"template": None, "vmRef": {"name": "vm-a"}}, "spec.vmRef"),
    ],
    ids=["vmRef-renamed", "vmRef-to-template", "template-to-vmRef"],
)
def test_vmref_is_immutable(
    request: pytest.FixtureRequest,
    kube_api: KubeApi,
    namespace: str,
    before: JsonObj,
    after: JsonObj,
    field_path: str,
):
    spec = {"security": {"options": ["Basic"]}, **before}
    created = send(kube_api, manifest("SecureVM", spec, "adopter", namespace), namespace,
                   dry_run=False)  # fmt: skip
    assert created.accepted, created.message
    path = _path("SecureVM", namespace, "adopter")
    with pytest.raises(ApiError) as info:
        kube_api.merge_patch(path, {"spec": after})
    err = info.value
    assert err.status == 422, err
    causes = (err.body.get("details") or {}).get("causes") or []
    assert any(names_field(str(c.get("field", "")), field_path) for c in causes), causes
    assert all(c.get("reason") and c.get("message") for c in causes), causes
    assert kube_api.get(path)["spec"] == spec  # nothing changed
    record(
        "4",
        f"vmRef immutability on update ({request.node.callspec.id})",
        1,
        f"rejected: {causes[0]['field']}: {causes[0]['reason']}",
    )
