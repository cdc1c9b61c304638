"""The chart's RBAC and ValidatingAdmissionPolicy templates, generated from one Python source.

Each role and policy is written once:

* the trust monitor's (verifier and node-agent roles, the three admission policies) in
  `sod_operator.verifier.rbac`, because the runtime needs them too (`sod-verifier manifests`,
  and the test bed applies them);
* the operator's and the tenants' roles, which only the chart installs, below.

`python -m sod_codegen.crdgen --write` (`make crds`) renders every template in `TEMPLATES`; the
drift test (`tests/unit/api/test_crds_in_sync.py`) fails when a committed one is stale.

Names, the namespace and ServiceAccounts depend on the release and its values, so the YAML is
dumped with tokens (`@@namespace@@`, ...) where the template actions go, and each token is then
replaced by its action. A token has no space, so the YAML emitter never breaks a line inside it;
Helm expands the action before the YAML is parsed, so the quoting around it stays valid.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import yaml
from sod_operator.api.constants import GROUP
from sod_operator.verifier import rbac
from sod_operator.verifier.rbac import READ, Policy, Role, Rule

TEMPLATES_DIR = "charts/sod-operator/templates"
RBAC_V1 = f"{rbac.RBAC_GROUP}/v1"
VAP_V1 = "admissionregistration.k8s.io/v1"

NAME = '{{ include "sod-operator.componentName" $c }}'
FULLNAME = '{{ include "sod-operator.fullname" . }}'
TOKENS = {
    "@@namespace@@": "{{ .Release.Namespace }}",
    "@@serviceAccount@@": '{{ include "sod-operator.serviceAccountName" $c }}',
    "@@name@@": NAME,
    "@@challenges@@": '{{ include "sod-operator.challengesConfigMap" . }}',
    "@@renewals@@": '{{ include "sod-operator.renewalsConfigMap" . }}',
}
SA_USER = rbac.sa_username("@@namespace@@", "@@serviceAccount@@")

# The component's values (for its serviceAccount), passed to the named templates as `.values`.
VALUES_KEY = {"operator": "operator", "verifier": "verifier", "node-agent": "nodeAgent"}
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


@dataclass(frozen=True)
class When:
    """A rule the chart renders only when `condition` (a Helm expression) holds."""

    condition: str
    rule: Rule


@dataclass(frozen=True)
class Binding:
    """The binding of a chart role: to the component's ServiceAccount, or to groups in values."""

    file: str
    condition: str = ""  # default: the role's
    groups_value: str = ""  # e.g. `.Values.rbac.catalogReaderGroups`


@dataclass(frozen=True)
class ChartRole:
    file: str
    condition: str
    component: str
    why: str
    rules: tuple[Rule | When, ...]
    source: str  # the module the role is written in, named in the template's header
    binding: Binding | None = None
    suffix: str = ""  # the name is `<component's name><suffix>`
    namespaced: bool = False  # a Role in the release namespace instead of a ClusterRole
    aggregate_to: tuple[str, ...] = ()  # default roles (`view`, `edit`, `admin`) it extends
    aggregate_when: str = ""  # a Helm condition for the aggregation labels


OPERATOR_ROLE = ChartRole(
    "operator-clusterrole.yaml",
    ".Values.rbac.create",
    "operator",
    why=(
        "The operator reconciles SecureVMs into KubeVirt VMs and migrations. It reads node "
        "labels but can never write them (only the verifier labels nodes); of NodeAttestations it "
        "reads only the verdicts' expiry times (a label outliving its verdict is void: fail "
        "closed without any verifier, issue 17), never writes them. Every grant is used: "
        "tests/e2e/test_reliability_authz.py audits a run of the operator under this role "
        "(docs/RELIABILITY.md lists each grant and why)."
    ),
    source=__name__,
    binding=Binding("operator-clusterrolebinding.yaml"),
    rules=(
        Rule((GROUP,), ("securevms",), READ, why=(
            "SecureVMs: watch them and write their status; never their spec (the tenant's "
            "request). kopf stores nothing on them (index and event handlers only: no "
            "finalizers, no progress).")),
        Rule((GROUP,), ("securevms/status",), ("patch",)),
        Rule((GROUP,), ("serversecurityprofiles", "securitypackages"), READ, why=(
            "The catalog: profiles (whose status counts verified nodes) and packages.")),
        Rule((GROUP,), ("serversecurityprofiles/status",), ("patch",)),
        Rule(("",), ("nodes",), READ, why="Node trust labels are read, never written."),
        Rule((GROUP,), ("nodeattestations",), READ, why=(
            "Verdicts' expiryTime: a verified profile is void once its verdict expired, even "
            "while its label is still on the node (no verifier left to remove it). Read only.")),
        Rule(("kubevirt.io",), ("virtualmachines",), (*READ, "create", "patch"), why=(
            "VMs are created from spec.template (or adopted) and patched (affinity, a changed "
            "template, fail-closed Stop); never deleted (owner references garbage-collect the "
            "VMs it created).")),
        Rule(("kubevirt.io",), ("virtualmachineinstances",), (*READ, "delete"), why=(
            "Restart relocation (confidential VMs, where allowed) and re-rendering an instance "
            "that was never scheduled both delete the VMI; the VM controller recreates it.")),
        Rule(("",), ("pods",), READ, why=(
            "Where each VM runs: the node the scheduler bound its virt-launcher pod to (a VMI's "
            "status.nodeName is tenant-writable). Read only.")),
        Rule(("kubevirt.io",), ("virtualmachineinstancemigrations",), (*READ, "create"), why=(
            "Relocation: create migrations (the operator never cancels one).")),
        Rule(("apiextensions.k8s.io",), ("customresourcedefinitions",), READ, why=(
            "kopf notices CRDs installed after it started (e.g. KubeVirt's).")),
        When(".Values.operator.namespaces", Rule(("",), ("namespaces",), READ, why=(
            "With `operator.namespaces` set, kopf lists and watches Namespaces to match the "
            "names; without this rule it retries for about a minute at start-up before "
            "assuming the names exist."))),
        Rule(("",), ("events",), ("create",), why=(
            "Events for every decision (kopf's own event posting is off).")),
    ),
)  # fmt: skip

LEADER_ELECTION_ROLE = ChartRole(
    "operator-role-leaderelection.yaml",
    "and .Values.rbac.create .Values.operator.leaderElection.enabled",
    "operator",
    why="Leader election uses one Lease in the release namespace; nothing cluster-wide.",
    source=__name__,
    binding=Binding("operator-rolebinding-leaderelection.yaml"),
    suffix="-leader-election",
    namespaced=True,
    rules=(
        Rule(("coordination.k8s.io",), ("leases",), ("create",)),
        Rule(
            ("coordination.k8s.io",), ("leases",), ("get", "update"), resource_names=("@@name@@",)
        ),
    ),
)

RENEWALS_ROLE = ChartRole(
    "operator-role-renewals.yaml",
    ".Values.rbac.create",
    "operator",
    why=(
        "The verifier renews the fleet's verdict expiries in one ConfigMap in its own namespace "
        "(<fullname>-attestation-renewals); the operator reads it to know when a verified "
        "profile expires. Namespaced, read only, and only that ConfigMap: kopf is not used for "
        "it (it would watch every ConfigMap in the cluster)."
    ),
    source=__name__,
    binding=Binding("operator-rolebinding-renewals.yaml"),
    suffix="-renewals",
    namespaced=True,
    rules=(
        Rule(("",), ("configmaps",), READ, resource_names=("@@renewals@@",), why=(
            "Watch the renewals ConfigMap; list and watch are authorised by name too: the "
            "operator sends a metadata.name field selector, which RBAC matches against "
            "resourceNames.")),
    ),
)  # fmt: skip

USER_ROLES = (
    ChartRole(
        "user-clusterrole-catalog-reader.yaml",
        ".Values.rbac.create",
        "user-roles",
        why=(
            "Read the cluster-scoped catalog: which security architectures (profiles) and "
            "packages exist, so tenants know what they can ask for. NodeAttestations (evidence) "
            "are deliberately not included. Cluster-scoped objects need a ClusterRoleBinding: see "
            "rbac.catalogReaderGroups. Also aggregated into `view`, for subjects bound to `view` "
            "cluster-wide."
        ),
        source=__name__,
        binding=Binding(
            "user-clusterrolebinding-catalog-reader.yaml",
            condition="and .Values.rbac.create .Values.rbac.catalogReaderGroups",
            groups_value=".Values.rbac.catalogReaderGroups",
        ),
        suffix="-catalog-reader",
        rules=(Rule((GROUP,), ("serversecurityprofiles", "securitypackages"), READ),),
        aggregate_to=("view", "edit", "admin"),
        aggregate_when=".Values.rbac.aggregateToDefaultRoles",
    ),
    ChartRole(
        "user-clusterrole-edit.yaml",
        "and .Values.rbac.create .Values.rbac.aggregateToDefaultRoles",
        "user-roles",
        why=(
            "Write SecureVMs (never their status: that is the operator's). Aggregated into "
            "`edit` and `admin`."
        ),
        source=__name__,
        suffix="-securevm-edit",
        rules=(
            Rule(
                (GROUP,),
                ("securevms",),
                ("create", "update", "patch", "delete", "deletecollection"),
            ),
        ),
        aggregate_to=("edit", "admin"),
    ),
    ChartRole(
        "user-clusterrole-view.yaml",
        "and .Values.rbac.create .Values.rbac.aggregateToDefaultRoles",
        "user-roles",
        why=(
            "Read SecureVMs. Aggregated into `view` (and `edit`/`admin`, which include reading), "
            "so a RoleBinding to `view` in a namespace lets a tenant read the SecureVMs there."
        ),
        source=__name__,
        suffix="-securevm-view",
        rules=(Rule((GROUP,), ("securevms", "securevms/status"), READ),),
        aggregate_to=("view", "edit", "admin"),
    ),
)


def _trust_monitor_role(role: Role, file_stem: str) -> ChartRole:
    values = VALUES_KEY[role.component]
    return ChartRole(
        f"{file_stem}-clusterrole.yaml",
        f"and .Values.{values}.enabled .Values.rbac.create",
        role.component,
        why=role.why,
        rules=role.rules,
        source=rbac.__name__,
        binding=Binding(f"{file_stem}-clusterrolebinding.yaml"),
    )


# Names the runtime's roles give (`manifests()`) -> the chart's template action for them.
CHART_NAMES = {
    rbac.LEASE_NAME: "@@name@@",
    rbac.CHALLENGES_CONFIGMAP: "@@challenges@@",
    rbac.RENEWALS_CONFIGMAP: "@@renewals@@",
}


def _namespaced_role(
    role: Role, file_stem: str, kind: str, suffix: str, when: str = ""
) -> ChartRole:
    """A component's Role in the release namespace, `<file_stem>-role<kind>.yaml` (and its
    binding), with the runtime's concrete resource names replaced by the chart's."""
    values = VALUES_KEY[role.component]
    rules = tuple(
        replace(r, resource_names=tuple(CHART_NAMES.get(n, n) for n in r.resource_names))
        for r in role.rules
    )
    return ChartRole(
        f"{file_stem}-role{kind}.yaml",
        f"and .Values.{values}.enabled .Values.rbac.create{when}",
        role.component,
        why=role.why,
        rules=rules,
        source=rbac.__name__,
        binding=Binding(f"{file_stem}-rolebinding{kind}.yaml"),
        suffix=suffix,
        namespaced=True,
    )


def _lease_role(role: Role, file_stem: str) -> ChartRole:
    """A component's leader-election Role; its Lease is named after the component."""
    values = VALUES_KEY[role.component]
    when = f" .Values.{values}.leaderElection.enabled"
    return _namespaced_role(role, file_stem, "-leaderelection", rbac.LEASE_SUFFIX, when)


def _challenges_role(role: Role, file_stem: str) -> ChartRole:
    """A component's access to the published nonces (with or without leader election)."""
    suffix = rbac.CHALLENGES_ROLE_SUFFIX
    return _namespaced_role(role, file_stem, suffix, suffix)


CHART_ROLES = (
    _trust_monitor_role(rbac.VERIFIER_ROLE, "verifier"),
    _lease_role(rbac.VERIFIER_LEASE_ROLE, "verifier"),
    _challenges_role(rbac.VERIFIER_CHALLENGES_ROLE, "verifier"),
    _trust_monitor_role(rbac.AGENT_ROLE, "nodeagent"),
    _challenges_role(rbac.AGENT_CHALLENGES_ROLE, "nodeagent"),
    OPERATOR_ROLE,
    LEADER_ELECTION_ROLE,
    RENEWALS_ROLE,
    *USER_ROLES,
)

# Each policy's template and its binding's template.
POLICY_FILES = {
    rbac.OWN_NODE.suffix: "nodeagent-validatingadmissionpolicy{}.yaml",
    rbac.LABELS_ONLY.suffix: "verifier-validatingadmissionpolicy{}-labels-only.yaml",
    rbac.TRUST_LABELS.suffix: "verifier-validatingadmissionpolicy{}-trust-labels.yaml",
}


# --- rendering -------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Sequences indented under their key (as the hand-written templates are)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # CEL and messages read best folded (`>-`); names stay plain.
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style=">" if " " in data else None
    )


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    flow = all(isinstance(x, str) and " " not in x for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def _helm(text: str) -> str:
    for token, action in TOKENS.items():
        text = text.replace(token, action)
    if "@@" in text:  # a token nobody maps would reach the cluster as a literal name
        raise ValueError(f"unknown placeholder in generated template:\n{text}")
    return text


def _yaml(obj: dict[str, Any]) -> str:
    return _helm(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=88))


def _comment(text: str, indent: int = 0) -> list[str]:
    prefix = " " * indent + "# "
    return textwrap.wrap(
        text, 100, initial_indent=prefix, subsequent_indent=prefix, break_on_hyphens=False
    )


def _document(
    condition: str, component: str, source: str, why: str, kind: str, metadata: list[str]
) -> list[str]:
    """A template's head: its guard, `$c` for the named templates, comments, kind, metadata."""
    c = f'dict "root" . "component" "{component}"'
    if component in VALUES_KEY:
        c += f' "values" .Values.{VALUES_KEY[component]}'
    api_version = VAP_V1 if kind.startswith("ValidatingAdmission") else RBAC_V1
    return [
        f"{{{{- if {condition} }}}}",
        f"{{{{- $c := {c} }}}}",
        f"# GENERATED by `python -m sod_codegen.crdgen --write` from {source}. Do not edit.",
        *_comment(why),
        f"apiVersion: {api_version}",
        f"kind: {kind}",
        "metadata:",
        *metadata,
    ]


def _metadata(name: str, namespaced: bool = False, extra_labels: Iterable[str] = ()) -> list[str]:
    return [
        f"  name: {name}",
        *(["  namespace: {{ .Release.Namespace }}"] if namespaced else []),
        "  labels:",
        '    {{- include "sod-operator.componentLabels" $c | nindent 4 }}',
        *extra_labels,
    ]


def _rule_lines(item: Rule | When) -> list[str]:
    rule, condition = (item.rule, item.condition) if isinstance(item, When) else (item, "")
    fields = [f"{key}: {json.dumps(value)}" for key, value in rule.manifest().items()]
    lines = [f"  {{{{- if {condition} }}}}"] if condition else []
    lines += _comment(rule.why, indent=2) if rule.why else []
    lines += [f"  - {fields[0]}", *(f"    {f}" for f in fields[1:])]
    return lines + (["  {{- end }}"] if condition else [])


def _aggregation_labels(role: ChartRole) -> list[str]:
    labels = [f'    {AGGREGATE}{r}: "true"' for r in role.aggregate_to]
    if labels and role.aggregate_when:
        labels = [f"    {{{{- if {role.aggregate_when} }}}}", *labels, "    {{- end }}"]
    return labels


def render_role(role: ChartRole) -> str:
    kind = "Role" if role.namespaced else "ClusterRole"
    meta = _metadata(NAME + role.suffix, role.namespaced, _aggregation_labels(role))
    lines = _document(role.condition, role.component, role.source, role.why, kind, meta)
    lines.append("rules:")
    for rule in role.rules:
        lines += _rule_lines(rule)
    return _helm("\n".join(lines)) + "\n{{- end }}\n"


def _subjects(binding: Binding) -> list[str]:
    if not binding.groups_value:
        return [
            "subjects:",
            "  - kind: ServiceAccount",
            f"    name: {TOKENS['@@serviceAccount@@']}",
            f"    namespace: {TOKENS['@@namespace@@']}",
        ]
    return [
        "subjects:",
        f"  {{{{- range {binding.groups_value} }}}}",
        f"  - apiGroup: {rbac.RBAC_GROUP}",
        "    kind: Group",
        "    name: {{ . | quote }}",
        "  {{- end }}",
    ]


def render_binding(role: ChartRole, binding: Binding) -> str:
    kind = "Role" if role.namespaced else "ClusterRole"
    name = NAME + role.suffix
    why = f"Binds the {kind} of the same name."
    lines = _document(
        binding.condition or role.condition, role.component, __name__, why, f"{kind}Binding",
        _metadata(name, role.namespaced),
    )  # fmt: skip
    lines += [
        "roleRef:",
        f"  apiGroup: {rbac.RBAC_GROUP}",
        f"  kind: {kind}",
        f"  name: {name}",
        *_subjects(binding),
    ]
    return "\n".join(lines) + "\n{{- end }}\n"


def _policy_condition(policy: Policy) -> str:
    values = VALUES_KEY[policy.component]
    return f"and .Values.{values}.enabled .Values.{values}.admissionPolicy"


def _policy_name(policy: Policy) -> str:
    return f"{FULLNAME if policy.release_wide else NAME}-{policy.suffix}"


def _policy_document(policy: Policy, kind: str, why: str, body: str) -> str:
    """A policy's (or its binding's) template: the document head, then `body` (YAML text)."""
    lines = _document(
        _policy_condition(policy), policy.component, rbac.__name__, why,
        kind, _metadata(_policy_name(policy)),
    )  # fmt: skip
    return "\n".join(lines) + "\n" + body + "{{- end }}\n"


def render_policy(policy: Policy) -> str:
    body = _yaml({"spec": policy.manifest_spec(SA_USER)})
    return _policy_document(policy, "ValidatingAdmissionPolicy", policy.why, body)


def render_policy_binding(policy: Policy) -> str:
    why = "Denies what the ValidatingAdmissionPolicy of the same name rejects."
    # The name holds a template action: written as text, not through the YAML dumper.
    spec = rbac.policy_binding_spec(_policy_name(policy))
    body = f"spec:\n  policyName: {spec['policyName']}\n"
    body += f"  validationActions: {json.dumps(spec['validationActions'])}\n"
    return _policy_document(policy, "ValidatingAdmissionPolicyBinding", why, body)


def _templates() -> dict[str, Callable[[], str]]:
    out: dict[str, Callable[[], str]] = {}
    for role in CHART_ROLES:
        out[f"{TEMPLATES_DIR}/{role.file}"] = lambda r=role: render_role(r)  # type: ignore[misc]
        if role.binding is not None:
            out[f"{TEMPLATES_DIR}/{role.binding.file}"] = (
                lambda r=role, b=role.binding: render_binding(r, b)  # type: ignore[misc]
            )
    for policy in rbac.POLICIES:
        file = POLICY_FILES[policy.suffix]
        out[f"{TEMPLATES_DIR}/{file.format('')}"] = lambda p=policy: render_policy(p)  # type: ignore[misc]
        out[f"{TEMPLATES_DIR}/{file.format('binding')}"] = (
            lambda p=policy: render_policy_binding(p)  # type: ignore[misc]
        )
    return out


# Every generated template: path (from the repository root) -> its renderer.
TEMPLATES: dict[str, Callable[[], str]] = _templates()
