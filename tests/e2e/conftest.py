"""Fixtures of the e2e tier: one real local control plane per test session.

* `sandbox` (session): `LocalCluster` (etcd, kube-apiserver, controller-manager, scheduler, kwok,
  real KubeVirt virt-api and virt-controller) with the fake nodes in `E2E_NODES`, our CRDs and
  KubeVirt's, and the virt-handler player in a thread with fast settings (`E2E_PLAYER_CONFIG`:
  modelled migration durations x0.05). Missing binaries FAIL the session with the build
  command: the tier never skips (`make test` builds them first).
* `handler_player` (session): the player's handle (`restart()`).
* `kube_api` (session): the admin `KubeApi`; `kubeconfig` (session): its path, for KopfRunner
  or subprocesses.
* `namespace` (function): a fresh namespace (with its default ServiceAccount) per test, deleted
  afterwards; `kube` (function): a `harness.Kube` bound to it.
* `operator` (function): sod-operator for `namespace`, not started; `hyperwall_operator`
  (function): sod-operator on `namespace` with both hyperwall nodes
  verified (test_operator_kubevirt.py, test_qemu_migration.py).
* On failure, the tail of every component log (and the player's) is attached to the report.

Other e2e modules (operator, trust monitor) reuse these; per-node services can be added by
extending `E2E_NODE_SERVICES` (see `sod_testbed.cluster` for the extension points).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sod_testbed.binaries import MissingBinaries, find_binaries
from sod_testbed.cluster import LocalCluster, NodeService, SandboxError, tail_logs
from sod_testbed.handler_player import PlayerConfig
from sod_testbed.kubeapi import KubeApi, resource_path
from sod_testbed.nodes import NodeSpec, parse_nodes

from tests.e2e.harness import Kube, PlayerInThread, sodctl_sandbox
from tests.e2e.operator_run import OperatorProcess, Trust, install_catalog, stopped_afterwards

# sev-snp and tdx nodes: confidential VMs (issue 14, tests/e2e/test_confidential.py).
E2E_NODES: list[NodeSpec] = parse_nodes("hyperwall=2,datasafe=1,plain=2,sev-snp=2,tdx=1")
E2E_NODE_SERVICES: list[NodeService] = []
E2E_PLAYER_CONFIG = PlayerConfig(time_scale=0.05, resync_seconds=2.0)

_CLUSTER_KEY = pytest.StashKey[LocalCluster]()
_PLAYER_KEY = pytest.StashKey[PlayerInThread]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def sandbox(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    problem = None
    try:
        binaries = find_binaries()
    except MissingBinaries as err:
        problem = str(err)  # fail outside the except block: no chained traceback
    if problem:
        pytest.fail(f"e2e tier: {problem}", pytrace=False)
    cluster = LocalCluster(
        tmp_path_factory.mktemp("sandbox"),
        E2E_NODES,
        binaries=binaries,
        node_services=E2E_NODE_SERVICES,
    )
    request.config.stash[_CLUSTER_KEY] = cluster
    try:
        cluster.start()
    except SandboxError as err:
        problem = str(err)
    if problem:
        pytest.fail(f"e2e tier: the local control plane did not start: {problem}", pytrace=False)
    player = PlayerInThread(cluster, E2E_PLAYER_CONFIG)
    request.config.stash[_PLAYER_KEY] = player
    cluster.on_stop(player.stop)
    player.start()
    yield cluster
    cluster.stop(remove_state=False)


@pytest.fixture(scope="session")
def handler_player(request: pytest.FixtureRequest, sandbox: LocalCluster) -> PlayerInThread:
    return request.config.stash[_PLAYER_KEY]


@pytest.fixture(scope="session")
def kube_api(sandbox: LocalCluster) -> KubeApi:
    return sandbox.api()


@pytest.fixture(scope="session")
def kubeconfig(sandbox: LocalCluster) -> Path:
    return sandbox.kubeconfig


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, sandbox: LocalCluster, kube_api: KubeApi
) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    kube_api.create(
        resource_path("v1", "namespaces"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    sandbox.wait_for_service_account(name, timeout=30)
    yield name
    kube_api.delete(resource_path("v1", "namespaces", name=name))


@pytest.fixture
def kube(kube_api: KubeApi, namespace: str) -> Kube:
    return Kube(kube_api, namespace)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if cluster is None or not cluster.log_dir.is_dir():
        return
    report.sections.append(("sandbox component logs (tails)", tail_logs(cluster, 3000)))


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The state directory of a test's own `sodctl sandbox` (see `harness.sodctl_sandbox`)."""
    path = tmp_path / "sandbox"
    yield path
    sodctl_sandbox(path, "down", check=False)  # never leave a sandbox behind, even on failure


@pytest.fixture
def hyperwall_operator(
    kubeconfig: Path, namespace: str, tmp_path: Path, kube_api: KubeApi
) -> Iterator[OperatorProcess]:
    """sod-operator watching `namespace`, the catalog installed and both hyperwall nodes
    verified; afterwards every profile label is gone again and the operator's log printed."""
    install_catalog(kube_api)
    Trust(kube_api).baseline({"hyperwall-1": ("hyperwall",), "hyperwall-2": ("hyperwall",)})
    op = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
    yield from stopped_afterwards(op)
    Trust(kube_api).baseline({})


@pytest.fixture
def operator(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """sod-operator for `namespace`, not started (the test starts it when it needs to);
    modules that need another set-up define their own `operator`."""
    yield from stopped_afterwards(OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log"))
