"""Least privilege for the trust monitor, as manifests: RBAC and ValidatingAdmissionPolicies.

    sod-verifier manifests [--namespace sod-system]   # prints the YAML below

* **verifier** (ServiceAccount `sod-verifier`): reads NodeAttestations and profiles, writes
  only NodeAttestation `/status`, and is the ONLY identity allowed to patch Nodes. A policy
  (`sod-verifier-labels-only`) confines even that to labels under
  `sod.node-restriction.kubernetes.io/`: a compromised verifier cannot taint, cordon or
  relabel nodes otherwise.
* **verifier leader election**: a Role in the verifier's namespace to create and renew its one
  Lease (`sod-verifier`), so that of several replicas only one judges nodes at a time.
* **published nonces and renewals**: a Role in the verifier's namespace lets the verifier
  create the two ConfigMaps it publishes the fleet's nonces and expiry renewals in
  (`sod-attestation-challenges`, `sod-attestation-renewals`) and read and update only those;
  another lets the node-agents only read the nonces (`-challenges` Roles); the operator may
  only read the renewals (its own Role, `sod_codegen.rbac`).
* **node-agent** (ServiceAccount `sod-node-agent`): get/list/watch/create/update/patch of
  NodeAttestations and nothing else: no `/status` (the verdict), no Nodes, no delete
  (admission cannot confine deletes, so the agent has no delete verb; re-enrollment after a
  TPM swap is an administrator's delete). `sod-node-agent-own-node` confines its writes to
  the object named after the node bound into its token
  (`authentication.kubernetes.io/node-name`, set for tokens bound to a Pod or a Node).
  Agents may read other nodes' evidence: it is public by design (certificates, public keys,
  signed quotes); nothing secret is stored in a NodeAttestation.
* **trust labels**: `sod-trust-labels-verifier-only` rejects any change to labels under our
  prefix by anyone but the verifier (cluster admins in `system:masters` keep a break-glass).
  NodeRestriction already stops kubelets; this stops every other identity with `nodes/patch`.
* **platform enrollments** (`PlatformEnrollment`: which architecture each machine's EK is
  enrolled for): the verifier only reads them; no identity here may write them, so only the
  platform team (cluster admins) can: a node's architecture is never its own word.
* **tenants**: nothing is aggregated into `view`/`edit`/`admin`, and NodeAttestations are
  cluster-scoped, so a namespace RoleBinding can never grant them.

This module is the one place these roles and policies are written. Two renderings read it:
`manifests()` (concrete names; printed by `sod-verifier manifests`, applied by the test bed) and
the Helm chart's templates, which `python -m sod_codegen.crdgen --write` generates from the same
`Role`s and `Policy`s with Helm placeholders for the names (the drift test keeps them current).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from sod_operator.api.constants import GROUP, NODE_LABEL_PREFIX
from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_CONFIGMAP, RENEWALS_CONFIGMAP

FULLNAME = "sod"  # the chart rendered with fullnameOverride=sod names its objects like these
VERIFIER_SA = f"{FULLNAME}-verifier"
AGENT_SA = f"{FULLNAME}-node-agent"
DEFAULT_NAMESPACE = "sod-system"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
PART_OF = {"app.kubernetes.io/part-of": "sod-operator"}
RBAC_GROUP = "rbac.authorization.k8s.io"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One PolicyRule and why it is granted (the chart shows `why` as a comment above it)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str = ""
    resource_names: tuple[str, ...] = ()

    def manifest(self) -> Manifest:
        out: Manifest = {"apiGroups": list(self.api_groups), "resources": list(self.resources)}
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        out["verbs"] = list(self.verbs)
        return out


@dataclass(frozen=True)
class Role:
    """The ClusterRole of one component, bound to that component's ServiceAccount."""

    component: str
    why: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Policy:
    """A ValidatingAdmissionPolicy about one component's identity, bound with `Deny`.

    `spec` builds the spec from that component's service-account user name, so the chart can
    pass a Helm placeholder where `manifests()` passes `system:serviceaccount:<ns>:<name>`.
    """

    suffix: str  # the name is `<component's name>-<suffix>`, or `<release>-<suffix>`
    component: str
    why: str
    spec: Callable[[str], Manifest]
    release_wide: bool = False  # named after the release: it is about everyone, not a component

    def manifest_spec(self, user: str) -> Manifest:
        return {"failurePolicy": "Fail", **self.spec(user)}


READ = ("get", "list", "watch")

VERIFIER_ROLE = Role(
    "verifier",
    why=(
        "The verifier is the ONLY identity of the chart that may write nodes: it labels the "
        "nodes whose evidence it verified and removes the labels when trust is lost (fail "
        "closed); the policy <fullname>-verifier-labels-only confines those writes to the trust "
        "labels. It writes the verdict into NodeAttestation status but never touches the "
        "evidence (spec) the agents write."
    ),
    rules=(
        Rule(("",), ("nodes",), (*READ, "patch")),
        Rule((GROUP,), ("nodeattestations",), READ),
        Rule((GROUP,), ("nodeattestations/status",), ("get", "update", "patch")),
        Rule(
            (GROUP,),
            ("serversecurityprofiles",),
            READ,
            why="Each profile's attestation policy (golden PCRs, accepted AKs, freshness).",
        ),
        Rule(
            (GROUP,),
            ("platformenrollments",),
            READ,
            why=(
                "Which architecture the platform team enrolled each machine's EK for (read "
                "only: nothing in this chart may write PlatformEnrollments; the platform "
                "team's cluster admins do)."
            ),
        ),
        Rule(("",), ("events",), ("create", "patch")),
    ),
)

LEASE_NAME = f"{FULLNAME}-verifier"
LEASE_SUFFIX = "-leader-election"
COORDINATION_GROUP = "coordination.k8s.io"

VERIFIER_LEASE_ROLE = Role(
    "verifier",
    why=(
        "Leader election among the verifier's replicas: one Lease in the release namespace, "
        "named after the verifier; nothing cluster-wide. Only the Lease holder judges nodes."
    ),
    rules=(
        Rule((COORDINATION_GROUP,), ("leases",), ("create",)),
        Rule((COORDINATION_GROUP,), ("leases",), ("get", "update"), resource_names=(LEASE_NAME,)),
    ),
)

AGENT_ROLE = Role(
    "node-agent",
    why=(
        "The node-agent only produces evidence: it creates and updates the NodeAttestation of "
        "its own node (the ValidatingAdmissionPolicy <fullname>-node-agent-own-node enforces "
        '"its own"). No delete (admission cannot confine deletes), no status (the verdict is '
        "the verifier's), no nodes. list/watch serve the agent's watch of its own object (a "
        "metadata.name field selector); RBAC cannot narrow them to the node's name, so an agent "
        "can read other nodes' evidence, which holds only public data (quotes, public keys, "
        "claims) and which it still cannot write."
    ),
    rules=(Rule((GROUP,), ("nodeattestations",), (*READ, "create", "patch", "update")),),
)

# The ConfigMaps' default names are the chart's with fullnameOverride=sod (FULLNAME).
__all__ = ["CHALLENGES_CONFIGMAP", "RENEWALS_CONFIGMAP"]
CHALLENGES_ROLE_SUFFIX = "-challenges"
CONFIGMAP_WHY = (
    "list and watch are authorised by name too: the client sends a metadata.name field "
    "selector, which RBAC matches against resourceNames."
)

VERIFIER_CHALLENGES_ROLE = Role(
    "verifier",
    why=(
        "The verifier publishes the fleet's nonces (<fullname>-attestation-challenges) and its "
        "expiry renewals (<fullname>-attestation-renewals) in two ConfigMaps in its own "
        "namespace: one small write for every node together instead of a status write per node. "
        "Namespaced, and only those two ConfigMaps may be read or changed; no delete."
    ),
    rules=(
        Rule(
            ("",),
            ("configmaps",),
            ("create",),
            why=(
                "Create the challenges and renewals ConfigMaps when missing. RBAC cannot confine "
                "a create by name, so this allows creating any ConfigMap in the verifier's "
                "namespace, but no other ConfigMap may then be read, updated or deleted."
            ),
        ),
        Rule(
            ("",),
            ("configmaps",),
            (*READ, "update"),
            resource_names=(CHALLENGES_CONFIGMAP, RENEWALS_CONFIGMAP),
            why=(
                "Read and rotate the published nonces, read and update the renewals (update, "
                f"not patch); {CONFIGMAP_WHY}"
            ),
        ),
    ),
)

AGENT_CHALLENGES_ROLE = Role(
    "node-agent",
    why=(
        "The node-agent reads the verifier's published nonces (the ConfigMap "
        "<fullname>-attestation-challenges in the verifier's namespace) and quotes over the "
        "newest. Read only: an agent can never issue a nonce. Nonces are public; nothing else "
        "in the namespace is readable."
    ),
    rules=(
        Rule(
            ("",),
            ("configmaps",),
            READ,
            resource_names=(CHALLENGES_CONFIGMAP,),
            why=f"Watch the challenges ConfigMap; {CONFIGMAP_WHY}",
        ),
    ),
)

ROLES = (VERIFIER_ROLE, AGENT_ROLE)


def _own_node(agent: str) -> Manifest:
    return {
        "matchConstraints": {
            "resourceRules": [
                {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["nodeattestations", "nodeattestations/status"]}
            ]
        },
        "matchConditions": [
            {"name": "is-node-agent", "expression": f"request.userInfo.username == '{agent}'"}
        ],
        "variables": [
            {"name": "nodeName",
             "expression": f"'{NODE_NAME_EXTRA}' in request.userInfo.extra ? "
                           f"request.userInfo.extra['{NODE_NAME_EXTRA}'][0] : ''"},
        ],
        "validations": [
            {
                "expression": "variables.nodeName != ''",
                "message": "the node-agent's token carries no node name: use a token bound "
                           "to its Pod or Node, not a long-lived or unbound token",
                "reason": "Forbidden",
            },
            {
                "expression": "variables.nodeName == '' || "
                              "object.metadata.name == variables.nodeName",
                "messageExpression": "'a node-agent may write only the NodeAttestation of "
                                     "its own node: this agent is bound to node ' + "
                                     "variables.nodeName + ' and may not write "
                                     "NodeAttestation ' + object.metadata.name",
                "reason": "Forbidden",
            },
            {
                # A finalizer would let an agent block an administrator's delete (re-enrollment).
                "expression": "!has(object.metadata.finalizers) || "
                              "size(object.metadata.finalizers) == 0",
                "message": "a node-agent may not set finalizers on its NodeAttestation",
                "reason": "Forbidden",
            },
        ],
    }  # fmt: skip


def _node_labels_policy(
    operations: list[str], conditions: list[Manifest], old_labels: str, validations: list[Manifest]
) -> Manifest:
    """A policy on writes to nodes that compares the labels before (`old_labels`) and after."""
    return {
        "matchConstraints": {
            "resourceRules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": operations,
                 "resources": ["nodes"]}
            ]
        },
        "matchConditions": conditions,
        "variables": [
            {"name": "new", "expression": "object.metadata.?labels.orValue({})"},
            {"name": "old", "expression": old_labels},
        ],
        "validations": validations,
    }  # fmt: skip


def _labels_kept(exempt: str) -> str:
    """CEL: every label for which `exempt` (on `k`) is false is the same before and after."""
    return (
        f"variables.new.all(k, {exempt} || "
        "(k in variables.old && variables.old[k] == variables.new[k])) "
        f"&& variables.old.all(k, {exempt} || k in variables.new)"
    )


def _labels_only(verifier: str) -> Manifest:
    prefix = NODE_LABEL_PREFIX
    return _node_labels_policy(
        ["UPDATE"],
        [{"name": "is-verifier", "expression": f"request.userInfo.username == '{verifier}'"}],
        "oldObject.metadata.?labels.orValue({})",
        [
            {
                "expression": _labels_kept(f"k.startsWith('{prefix}')"),
                "message": f"the verifier may change only labels under '{prefix}'",
                "reason": "Forbidden",
            },
            {
                "expression": "object.spec == oldObject.spec && "
                              "object.metadata.?annotations.orValue({}) == "
                              "oldObject.metadata.?annotations.orValue({})",
                "message": "the verifier may not change a node's spec or annotations",
                "reason": "Forbidden",
            },
        ],
    )  # fmt: skip


def _trust_labels(verifier: str) -> Manifest:
    prefix = NODE_LABEL_PREFIX
    return _node_labels_policy(
        ["CREATE", "UPDATE"],
        [
            {"name": "not-the-verifier",
             "expression": f"request.userInfo.username != '{verifier}'"},
            {"name": "not-break-glass",
             "expression": "!('system:masters' in request.userInfo.groups)"},
        ],
        "request.operation == 'UPDATE' ? oldObject.metadata.?labels.orValue({}) : {}",
        [
            {
                "expression": _labels_kept(f"!k.startsWith('{prefix}')"),
                "messageExpression": f"'only the verifier may set or remove labels under "
                                     f"{prefix} (trust labels come from attestation); "
                                     "rejected for ' + request.userInfo.username",
                "reason": "Forbidden",
            },
        ],
    )  # fmt: skip


OWN_NODE = Policy(
    "own-node",
    "node-agent",
    why=(
        "Confines each node-agent to the NodeAttestation named like the node its pod runs on. "
        "The node name comes from the agent's bound service-account token (the kubelet mounts "
        "a token bound to the pod, and the apiserver adds the pod's node to the token's user "
        "info), so a compromised node cannot claim another node's name. Deletes cannot be "
        "confined by admission; the agent's role has no delete verb. Pattern: "
        "kubernetes/kubernetes test/e2e/auth/e2edata/per_node_validatingadmissionpolicy.yaml. "
        "No finalizers: one would let an agent block an administrator's delete (re-enrollment)."
    ),
    spec=_own_node,
)
LABELS_ONLY = Policy(
    "labels-only",
    "verifier",
    why=(
        "The verifier may patch nodes, but only their trust labels: a compromised verifier "
        "cannot taint, cordon, annotate or relabel nodes otherwise."
    ),
    spec=_labels_only,
)
TRUST_LABELS = Policy(
    "trust-labels-verifier-only",
    "verifier",
    why=(
        "Nobody but the verifier may set or remove trust labels (cluster admins in "
        "system:masters keep a break-glass). NodeRestriction already stops kubelets; this stops "
        "every other identity that can patch nodes."
    ),
    spec=_trust_labels,
    release_wide=True,
)

POLICIES = (OWN_NODE, LABELS_ONLY, TRUST_LABELS)


def sa_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def component_name(component: str) -> str:
    return f"{FULLNAME}-{component}"


def policy_name(policy: Policy) -> str:
    base = FULLNAME if policy.release_wide else component_name(policy.component)
    return f"{base}-{policy.suffix}"


def _meta(name: str, component: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**PART_OF, "app.kubernetes.io/component": component},
    }
    if namespace:
        meta["namespace"] = namespace
    return meta


def role_manifests(role: Role, namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding of `role`'s component."""
    name, component = component_name(role.component), role.component
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(name, component, namespace)},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
         "metadata": _meta(name, component), "rules": [r.manifest() for r in role.rules]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(name, component),
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]  # fmt: skip


def namespaced_role_manifests(
    role: Role, suffix: str, namespace: str = DEFAULT_NAMESPACE
) -> list[Manifest]:
    """The Role and RoleBinding (in `namespace`, named `<component's name><suffix>`) of `role`,
    bound to the component's ServiceAccount."""
    sa, component = component_name(role.component), role.component
    name = sa + suffix
    return [
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role",
         "metadata": _meta(name, component, namespace),
         "rules": [r.manifest() for r in role.rules]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "RoleBinding",
         "metadata": _meta(name, component, namespace),
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
    ]  # fmt: skip


def verifier_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    return [
        *role_manifests(VERIFIER_ROLE, namespace),
        *namespaced_role_manifests(VERIFIER_LEASE_ROLE, LEASE_SUFFIX, namespace),
        *namespaced_role_manifests(VERIFIER_CHALLENGES_ROLE, CHALLENGES_ROLE_SUFFIX, namespace),
    ]


def agent_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    return [
        *role_manifests(AGENT_ROLE, namespace),
        *namespaced_role_manifests(AGENT_CHALLENGES_ROLE, CHALLENGES_ROLE_SUFFIX, namespace),
    ]


def policy_binding_spec(name: str) -> Manifest:
    return {"policyName": name, "validationActions": ["Deny"]}


def policy_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    out: list[Manifest] = []
    for p in POLICIES:
        name, user = policy_name(p), sa_username(namespace, component_name(p.component))
        out += [
            {"apiVersion": "admissionregistration.k8s.io/v1",
             "kind": "ValidatingAdmissionPolicy",
             "metadata": _meta(name, p.component), "spec": p.manifest_spec(user)},
            {"apiVersion": "admissionregistration.k8s.io/v1",
             "kind": "ValidatingAdmissionPolicyBinding",
             "metadata": _meta(name, p.component), "spec": policy_binding_spec(name)},
        ]  # fmt: skip
    return out


def manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    """Everything the trust monitor needs, in apply order (namespace first)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace, "trust-monitor")},
        *verifier_manifests(namespace),
        *agent_manifests(namespace),
        *policy_manifests(namespace),
    ]


def render(namespace: str = DEFAULT_NAMESPACE) -> str:
    header = "# GENERATED by `sod-verifier manifests`: the trust monitor's least privilege.\n"
    return header + yaml.safe_dump_all(manifests(namespace), sort_keys=False, width=100)
