"""Least privilege for the trust monitor, as manifests: RBAC and ValidatingAdmissionPolicies.

    sod-verifier manifests [--namespace sod-system]   # prints the YAML below

* **verifier** (ServiceAccount `sod-verifier`): reads NodeAttestations and profiles, writes
  only NodeAttestation `/status`, and is the ONLY identity allowed to patch Nodes. A policy
  (`sod-verifier-labels-only`) confines even that to labels under
  `sod.node-restriction.kubernetes.io/`: a compromised verifier cannot taint, cordon or
  relabel nodes otherwise.
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
* **tenants**: nothing is aggregated into `view`/`edit`/`admin`, and NodeAttestations are
  cluster-scoped, so a namespace RoleBinding can never grant them.
"""

from __future__ import annotations

from typing import Any

import yaml

from sod_operator.api.constants import GROUP, NODE_LABEL_PREFIX

VERIFIER_SA = "sod-verifier"
AGENT_SA = "sod-node-agent"
DEFAULT_NAMESPACE = "sod-system"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
PART_OF = {"app.kubernetes.io/part-of": "sod-operator"}

Manifest = dict[str, Any]


def sa_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _meta(name: str, component: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**PART_OF, "app.kubernetes.io/component": component},
    }
    if namespace:
        meta["namespace"] = namespace
    return meta


def _binding(name: str, component: str, namespace: str, sa: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name, component),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }


def verifier_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(VERIFIER_SA, "verifier", namespace)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(VERIFIER_SA, "verifier"),
            "rules": [
                {"apiGroups": [GROUP], "resources": ["nodeattestations"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [GROUP], "resources": ["nodeattestations/status"],
                 "verbs": ["get", "update", "patch"]},
                {"apiGroups": [GROUP], "resources": ["serversecurityprofiles"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"],
                 "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        },
        _binding(VERIFIER_SA, "verifier", namespace, VERIFIER_SA),
    ]  # fmt: skip


def agent_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(AGENT_SA, "node-agent", namespace)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(AGENT_SA, "node-agent"),
            "rules": [
                {"apiGroups": [GROUP], "resources": ["nodeattestations"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch"]},
            ],
        },
        _binding(AGENT_SA, "node-agent", namespace, AGENT_SA),
    ]  # fmt: skip


def _policy(name: str, component: str, spec: dict[str, Any]) -> list[Manifest]:
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(name, component),
            "spec": {"failurePolicy": "Fail", **spec},
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(name, component),
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]


def policy_manifests(namespace: str = DEFAULT_NAMESPACE) -> list[Manifest]:
    agent = sa_username(namespace, AGENT_SA)
    verifier = sa_username(namespace, VERIFIER_SA)
    prefix = NODE_LABEL_PREFIX
    own_node = _policy(
        f"{AGENT_SA}-own-node",
        "node-agent",
        {
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [GROUP], "apiVersions": ["*"],
                     "operations": ["CREATE", "UPDATE"],
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
                    "expression": "!has(object.metadata.finalizers) || "
                                  "size(object.metadata.finalizers) == 0",
                    "message": "a node-agent may not set finalizers on its NodeAttestation",
                    "reason": "Forbidden",
                },
            ],
        },
    )  # fmt: skip
    labels_only = _policy(
        f"{VERIFIER_SA}-labels-only",
        "verifier",
        {
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                     "resources": ["nodes"]}
                ]
            },
            "matchConditions": [
                {"name": "is-verifier", "expression": f"request.userInfo.username == '{verifier}'"}
            ],
            "variables": [
                {"name": "new", "expression": "object.metadata.?labels.orValue({})"},
                {"name": "old", "expression": "oldObject.metadata.?labels.orValue({})"},
            ],
            "validations": [
                {
                    "expression": f"variables.new.all(k, k.startsWith('{prefix}') || "
                                  "(k in variables.old && variables.old[k] == variables.new[k])) "
                                  f"&& variables.old.all(k, k.startsWith('{prefix}') || "
                                  "k in variables.new)",
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
        },
    )  # fmt: skip
    verifier_only = _policy(
        "sod-trust-labels-verifier-only",
        "verifier",
        {
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"],
                     "operations": ["CREATE", "UPDATE"], "resources": ["nodes"]}
                ]
            },
            "matchConditions": [
                {"name": "not-the-verifier",
                 "expression": f"request.userInfo.username != '{verifier}'"},
                {"name": "not-break-glass",
                 "expression": "!('system:masters' in request.userInfo.groups)"},
            ],
            "variables": [
                {"name": "new", "expression": "object.metadata.?labels.orValue({})"},
                {"name": "old",
                 "expression": "request.operation == 'UPDATE' ? "
                               "oldObject.metadata.?labels.orValue({}) : {}"},
            ],
            "validations": [
                {
                    "expression": f"variables.new.all(k, !k.startsWith('{prefix}') || "
                                  "(k in variables.old && variables.old[k] == variables.new[k])) "
                                  f"&& variables.old.all(k, !k.startsWith('{prefix}') || "
                                  "k in variables.new)",
                    "messageExpression": f"'only the verifier may set or remove labels under "
                                         f"{prefix} (trust labels come from attestation); "
                                         "rejected for ' + request.userInfo.username",
                    "reason": "Forbidden",
                },
            ],
        },
    )  # fmt: skip
    return own_node + labels_only + verifier_only


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
