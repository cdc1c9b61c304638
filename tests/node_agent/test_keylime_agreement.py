"""Our quote check and Keylime's agree on genuine and tampered swtpm quotes (issue 15, item 3).

The benchmark (`--only attestation`) times both on the same quotes; this test makes a
disagreement fail CI instead of showing up only in a table. Nothing is timed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sod_testbed import swtpm

from bench import attestation, quotecheck

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> list[quotecheck.Verdicts]:
    why = quotecheck.missing()
    assert why is None, why  # keylime is in the dev extra: missing is a broken install
    swtpm.require_binaries()
    root: Path = tmp_path_factory.mktemp("keylime")
    ca = swtpm.LocalCa(root / "ca")
    node = attestation.SimulatedNode(root, ca, "node")
    other = attestation.SimulatedNode(root, ca, "other")
    try:
        node.enroll()
        other.agent_round()
        node.agent_round()
        genuine = attestation._case(node)
        other_ak = other.att.spec.tpm.ak_public
        cases = [genuine, *quotecheck.tampered(genuine, other_ak, os.urandom(32).hex())]
        return quotecheck.compare(cases)
    finally:
        node.stop()
        other.stop()


def test_every_kind_of_evidence_is_judged(verdicts: list[quotecheck.Verdicts]) -> None:
    assert [v.case for v in verdicts] == [
        "genuine",
        "tampered signature",
        "tampered PCR value",
        "wrong nonce",
        "other AK",
    ]


def test_both_accept_the_genuine_quote(verdicts: list[quotecheck.Verdicts]) -> None:
    genuine = verdicts[0]
    assert genuine.ours is None, genuine.ours
    assert genuine.keylime is None, genuine.keylime


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_both_reject_each_tampered_quote(verdicts: list[quotecheck.Verdicts], index: int) -> None:
    v = verdicts[index]
    assert v.ours is not None, f"ours accepted a {v.case} quote"
    assert v.keylime is not None, f"Keylime accepted a {v.case} quote"


def test_the_reasons_name_what_was_tampered(verdicts: list[quotecheck.Verdicts]) -> None:
    reasons = {v.case: v.ours for v in verdicts}
    assert "QuoteSignatureInvalid" in str(reasons["tampered signature"])
    assert "PcrDigestMismatch" in str(reasons["tampered PCR value"])
    assert "QualifyingDataMismatch" in str(reasons["wrong nonce"])
    assert "QuoteSignatureInvalid" in str(reasons["other AK"])


def test_pcr_blob_reads_back_through_keylimes_parser(verdicts: list[quotecheck.Verdicts]) -> None:
    """The adapter writes what Keylime reads: the tampered-PCR rejection is Keylime's digest
    comparison, not a parse error of our file."""
    tampered_pcr = verdicts[2]
    assert "digest used for quoting is different" in str(tampered_pcr.keylime)
