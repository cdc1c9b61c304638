"""The published nonces' ConfigMap under the apiserver's own RBAC, as the test bed applies it
(`sod_operator.verifier.rbac.manifests()`, the same rules the chart renders):

* a node-agent (a ServiceAccount token bound to its Node, as the bed's agents get) reads the
  challenges ConfigMap of the verifier's namespace by get, by list and by watch with a
  `metadata.name` field selector, and nothing else: no other ConfigMap, no unfiltered list, no
  write;
* the verifier creates ConfigMaps there (RBAC cannot confine a create by name) but reads and
  updates only the challenges and renewals ones, and patches or deletes none; an agent cannot
  read the renewals.

Runs on the session's control plane with its own identities; it only reads the ConfigMap a
running verifier may be rotating, or writes back what it read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_KEY
from sod_operator.verifier import rbac
from sod_testbed.cluster import LocalCluster
from sod_testbed.kubeapi import ApiError, KubeApi, resource_path
from sod_testbed.trust import TrustBed, TrustConfig, apply_manifests

NS = rbac.DEFAULT_NAMESPACE
NAME = rbac.CHALLENGES_CONFIGMAP
CONFIGMAPS = resource_path("v1", "configmaps", namespace=NS)
CHALLENGES = resource_path("v1", "configmaps", namespace=NS, name=NAME)
OTHER = resource_path("v1", "configmaps", namespace=NS, name="kube-root-ca.crt")
RENEWALS = resource_path("v1", "configmaps", namespace=NS, name=rbac.RENEWALS_CONFIGMAP)
BY_NAME = f"metadata.name={NAME}"


def _forbidden(call: Callable[[], Any]) -> None:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == 403, info.value


@pytest.fixture(scope="module")
def identities(sandbox: LocalCluster, kube_api: KubeApi) -> tuple[KubeApi, KubeApi]:
    """(verifier, node-agent) clients, with the bed's RBAC applied and the ConfigMap present."""
    apply_manifests(kube_api, rbac.manifests(NS))
    bed = TrustBed(sandbox, TrustConfig())
    suffix = uuid.uuid4().hex[:6]
    verifier = KubeApi(str(bed.identity(f"rbac-verifier-{suffix}", rbac.VERIFIER_SA)))
    node = sandbox.nodes[0].name
    agent = KubeApi(str(bed.identity(f"rbac-agent-{suffix}", rbac.AGENT_SA, bound_node=node)))
    if kube_api.get_or_none(CHALLENGES) is None:  # no verifier ran yet: it would create it
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": NS},
                "data": {CHALLENGES_KEY: '{"challenges": []}'}}  # fmt: skip
        try:
            verifier.create(CONFIGMAPS, body)
        except ApiError as err:
            if err.status != 409:  # a verifier created it in between: fine
                raise
    return verifier, agent


def test_a_node_agent_reads_only_the_challenges_config_map(
    identities: tuple[KubeApi, KubeApi],
) -> None:
    _, agent = identities
    assert agent.get(CHALLENGES)["metadata"]["name"] == NAME
    listed = agent.list(CONFIGMAPS, field_selector=BY_NAME)
    assert [o["metadata"]["name"] for o in listed["items"]] == [NAME]
    stream = agent.watch(
        CONFIGMAPS, listed["metadata"]["resourceVersion"], timeout_seconds=1,
        field_selector=BY_NAME,
    )  # fmt: skip
    # Authorised (a 403 raises); an event arrives only if the ConfigMap changes meanwhile.
    event = next(stream, None)
    stream.close()
    assert event is None or event["type"] in ("ADDED", "MODIFIED", "BOOKMARK"), event
    _forbidden(lambda: agent.list(CONFIGMAPS))
    _forbidden(lambda: agent.get(OTHER))
    _forbidden(lambda: agent.get(RENEWALS))  # the renewals are the verifier's and operator's
    _forbidden(lambda: agent.replace(CHALLENGES, agent.get(CHALLENGES)))
    _forbidden(lambda: agent.merge_patch(CHALLENGES, {"data": {CHALLENGES_KEY: "{}"}}))
    _forbidden(lambda: agent.create(CONFIGMAPS, _probe()))
    _forbidden(lambda: agent.delete(CHALLENGES))
    _forbidden(lambda: agent.get(resource_path("v1", "configmaps", "default", NAME)))


def _probe() -> dict[str, Any]:
    name = f"rbac-probe-{uuid.uuid4().hex[:6]}"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}}


def test_the_verifier_updates_only_the_challenges_config_map(
    identities: tuple[KubeApi, KubeApi], kube_api: KubeApi
) -> None:
    verifier, _ = identities
    current = verifier.get(CHALLENGES)
    try:  # the same data back: harmless to a verifier that may be rotating it right now
        verifier.replace(CHALLENGES, current)
    except ApiError as err:
        if err.status != 409:  # 409: rotated in between, authorised all the same
            raise
    assert verifier.list(CONFIGMAPS, field_selector=BY_NAME)["items"]
    verifier.get_or_none(RENEWALS)  # authorised (a 403 raises), whether or not it exists yet
    _forbidden(lambda: verifier.delete(RENEWALS))
    _forbidden(lambda: verifier.merge_patch(CHALLENGES, {"metadata": {"labels": {"x": "y"}}}))
    _forbidden(lambda: verifier.delete(CHALLENGES))
    _forbidden(lambda: verifier.get(OTHER))
    _forbidden(lambda: verifier.list(CONFIGMAPS))
    probe = verifier.create(CONFIGMAPS, _probe())  # create cannot be confined by name
    path = resource_path("v1", "configmaps", namespace=NS, name=probe["metadata"]["name"])
    try:
        _forbidden(lambda: verifier.get(path))
        _forbidden(lambda: verifier.replace(path, probe))
        _forbidden(lambda: verifier.delete(path))
    finally:
        kube_api.delete(path)
