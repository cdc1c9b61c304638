"""`--nodes ARCH=N[:TPM],...` and `--label NODE:KEY=VALUE` parsing for the sandbox's fake nodes.

Covers: naming, the architecture label, kwok's annotation, the TPM variant, every rejection
message.
"""

from __future__ import annotations

import pytest
from sod_operator.api.constants import SIMULATED_ARCHITECTURE_LABEL
from sod_testbed.nodes import NodeSpecError, apply_labels, parse_nodes


def test_nodes_are_named_after_their_architecture() -> None:
    specs = parse_nodes("hyperwall=2,datasafe=1,plain=1")
    assert [s.name for s in specs] == ["hyperwall-1", "hyperwall-2", "datasafe-1", "plain-1"]
    manifest = specs[2].manifest()
    assert manifest["metadata"]["labels"][SIMULATED_ARCHITECTURE_LABEL] == "datasafe"
    assert manifest["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert manifest["metadata"]["labels"]["kubevirt.io/schedulable"] == "true"


def test_a_bare_architecture_means_one_node() -> None:
    assert [s.name for s in parse_nodes("tdx")] == ["tdx-1"]


def test_ecc_after_the_count_gives_those_nodes_an_ecc_tpm() -> None:
    specs = parse_nodes("plain=2,hyperwall=1:ecc,tdx:ecc,datasafe=1:rsa")
    assert [(s.name, s.tpm) for s in specs] == [
        ("plain-1", "rsa"),
        ("plain-2", "rsa"),
        ("hyperwall-1", "ecc"),
        ("tdx-1", "ecc"),
        ("datasafe-1", "rsa"),
    ]
    assert apply_labels(specs, ["hyperwall-1:zone=a"])[2].tpm == "ecc"


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("plain=1:dsa", "the TPM after ':' must be one of rsa, ecc"),
        ("Hyper=1", "'Hyper' is not an architecture name"),
        ("plain=x", "the count after '=' must be a whole number"),
        ("plain=0", "the count must be between 1 and 200"),
        ("plain=1,plain=2", "'plain' is listed twice"),
        ("", "give at least one node"),
    ],
)
def test_bad_nodes_arguments_say_why(arg: str, message: str) -> None:
    with pytest.raises(NodeSpecError, match=message):
        parse_nodes(arg)


def test_labels_apply_to_the_named_node_only() -> None:
    specs = apply_labels(parse_nodes("plain=2"), ["plain-2:zone=b"])
    assert specs[1].all_labels()["zone"] == "b"
    assert "zone" not in specs[0].all_labels()


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("plain-1", "is not NODE:KEY=VALUE"),
        ("plain-9:a=b", "no node 'plain-9'; the nodes are plain-1"),
        ("plain-1:bad key=v", "is not a valid Kubernetes label"),
    ],
)
def test_bad_labels_say_why(arg: str, message: str) -> None:
    with pytest.raises(NodeSpecError, match=message):
        apply_labels(parse_nodes("plain=1"), [arg])
