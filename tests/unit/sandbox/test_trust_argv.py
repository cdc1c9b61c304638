"""The trust bed's command lines parse with the real `sod-verifier` and `sod-node-agent` parsers
and say the same thing: the verifier publishes its nonces (every `challenge_interval` seconds)
in the ConfigMap `challenges` of its Lease namespace, and every agent reads them there.
The apiserver side (the agents' and the verifier's RBAC on that ConfigMap) is in
tests/e2e/test_trust_rbac.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

from sod_node_agent.main import build_parser as agent_parser
from sod_operator.verifier import rbac
from sod_operator.verifier.main import build_parser as verifier_parser
from sod_testbed.cluster import LocalCluster
from sod_testbed.trust import TrustBed, TrustConfig


class _StateOnly:
    """What TrustBed needs of a cluster to build command lines: its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir


def _bed(tmp_path: Path, config: TrustConfig | None = None) -> TrustBed:
    return TrustBed(cast(LocalCluster, _StateOnly(tmp_path)), config)


def _module_args(argv: list[str], module: str) -> list[str]:
    assert argv[:3] == [sys.executable, "-m", module]
    return argv[3:]


def test_by_default_nonces_come_as_often_as_the_agents_answer_from_the_apis_config_map(
    tmp_path: Path,
):
    config = TrustConfig()
    assert config.round_seconds == config.agent_interval
    assert (config.namespace, config.challenges) == (
        rbac.DEFAULT_NAMESPACE,
        rbac.CHALLENGES_CONFIGMAP,
    )
    bed = _bed(tmp_path)
    verifier = verifier_parser().parse_args(
        _module_args(bed.verifier_argv("verifier", tmp_path / "v.kubeconfig", 9464),
                     "sod_operator.verifier.main")
    )  # fmt: skip
    agent = agent_parser().parse_args(
        _module_args(bed.agent_argv("plain-1"), "sod_node_agent.main")
    )
    assert (verifier.lease_namespace, verifier.challenges) == (agent.namespace, agent.challenges)
    assert verifier.challenge_interval == agent.interval == config.agent_interval


def test_the_beds_knobs_reach_both_command_lines(tmp_path: Path):
    config = TrustConfig(
        agent_interval=1.0, challenge_interval=2.5, namespace="trust", challenges="nonces"
    )
    bed = _bed(tmp_path, config)
    verifier = verifier_parser().parse_args(
        _module_args(bed.verifier_argv("verifier-1", tmp_path / "v.kubeconfig", 9465),
                     "sod_operator.verifier.main")
    )  # fmt: skip
    assert verifier.challenge_interval == 2.5
    assert (verifier.lease_namespace, verifier.challenges) == ("trust", "nonces")
    assert verifier.identity == "verifier-1"
    assert verifier.metrics_port == 9465
    agent = agent_parser().parse_args(
        _module_args(bed.agent_argv("hyperwall-1"), "sod_node_agent.main")
    )
    assert (agent.node, agent.interval) == ("hyperwall-1", 1.0)
    assert (agent.namespace, agent.challenges) == ("trust", "nonces")
    assert agent.kubeconfig == str(bed.kubeconfig_for("agent-hyperwall-1"))


def test_the_operator_is_told_the_beds_renewals_config_map():
    """`sod-operator` reads the verifier's renewals where the bed's verifier writes them (the
    bed's namespace; by default the API's names, which are also the operator's defaults)."""
    from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_CONFIGMAP, TRUST_NAMESPACE
    from sod_operator.main import _parser as operator_parser

    told = operator_parser().parse_args(
        TrustConfig(namespace="trust", renewals="r").operator_args()
    )
    assert (told.renewals_namespace, told.renewals_configmap) == ("trust", "r")
    default = operator_parser().parse_args(TrustConfig().operator_args())
    assert (default.renewals_namespace, default.renewals_configmap) == (
        TRUST_NAMESPACE,
        RENEWALS_CONFIGMAP,
    )
    assert operator_parser().parse_args([]).renewals_configmap == RENEWALS_CONFIGMAP
