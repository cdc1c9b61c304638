"""Revocation notices from the real verifier in the test bed, to a TLS receiver on 127.0.0.1.

The verifier process (real apiserver, swtpm and agents, as in test_trust.py) is restarted
with `SOD_NOTIFY_URL`/`SOD_NOTIFY_SECRET_FILE`/`SOD_NOTIFY_CA_BUNDLE` (the `--notify-*`
defaults) pointing at a receiver whose certificate the test-bed PKI issued. A memory violation
on a node must arrive as a signed `dev.sod.trust.revoked` CloudEvent (after the receiver's
first answer, a 503, was retried) and healing it as `dev.sod.trust.restored`.
Unit-level delivery cases (400 not retried, untrusted certificate, full queue):
tests/unit/verifier/test_notify.py.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.verifier import notify
from sod_testbed.cluster import LocalCluster
from sod_testbed.kubeapi import KubeApi
from sod_testbed.trust import TrustBed

from tests.e2e.harness import wait_for
from tests.e2e.test_trust import (
    FRESHNESS,
    HYPERWALL,
    WAIT,
    bed,
    broken,
    wait_rejected,
    wait_verified,
)
from tests.unit.verifier.test_notify import KEY, Receiver, receiver

__all__ = ["bed", "broken", "receiver"]  # fixtures shared with test_trust.py / the unit tests


@pytest.fixture
def notifying(
    bed: TrustBed,
    sandbox: LocalCluster,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Receiver]:
    """The bed's verifier restarted with the webhook on; restarted without it afterwards."""
    key_file = tmp_path / "hmac-key"
    key_file.write_bytes(KEY)
    monkeypatch.setenv("SOD_NOTIFY_URL", receiver.url)
    monkeypatch.setenv("SOD_NOTIFY_SECRET_FILE", str(key_file))
    monkeypatch.setenv("SOD_NOTIFY_CA_BUNDLE", str(receiver.ca_file))
    sandbox.processes["verifier"].stop()
    receiver.metrics_port = bed.start_verifier()
    yield receiver
    monkeypatch.undo()
    sandbox.processes["verifier"].stop()
    bed.start_verifier()


def _metric(port: int, sample: str) -> float | None:
    """One sample from the verifier's /metrics (None when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def _events(r: Receiver) -> list[dict[str, Any]]:
    """Every request so far whose signature verifies, as CloudEvents (unsigned ones fail)."""
    with r.arrived:
        got = list(r.got)
    out = []
    for headers, body in got:
        assert headers["Content-Type"] == notify.CONTENT_TYPE
        sig, ts = headers[notify.SIGNATURE_HEADER], headers[notify.TIMESTAMP_HEADER]
        assert notify.verify(KEY, body, sig, ts, now=time.time()), headers
        out.append(json.loads(body))
    return out


def _notice(r: Receiver, kind: str, node: str, profile: str) -> dict[str, Any]:
    def match(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["type"] == kind and e["subject"] == node and e["data"]["profile"] == profile
        ]

    found = wait_for(lambda: match(_events(r)), bool, f"{kind} for {node}/{profile}", WAIT)
    return found[0]


def test_a_revocation_and_its_restoration_arrive_signed(
    bed: TrustBed,
    kube_api: KubeApi,
    broken: Callable[[str, str], None],
    notifying: Receiver,
) -> None:
    node = "hyperwall-2"
    wait_verified(kube_api, node)
    refused: set[str] = set()

    def answer(body: bytes) -> int:
        """503 to the first attempt of this node's revocation: the retry must bring it."""
        event = json.loads(body)
        if event["type"] == notify.TYPE_REVOKED and event["subject"] == node and not refused:
            refused.add(event["id"])
            return 503
        return 200

    notifying.answer = answer
    broken(node, "violation")
    wait_rejected(kube_api, node, HYPERWALL, R.RUNTIME_THRESHOLD_EXCEEDED)
    revoked = _notice(notifying, notify.TYPE_REVOKED, node, HYPERWALL)
    assert revoked["specversion"] == "1.0"
    assert revoked["data"]["node"] == node
    assert revoked["data"]["verified"] is False
    assert revoked["data"]["reason"] == R.RUNTIME_THRESHOLD_EXCEEDED
    assert revoked["data"]["message"]
    assert refused == {revoked["id"]}, "the refused notice arrived again, same event id"
    wait_for(
        lambda: [e["id"] for e in _events(notifying)].count(revoked["id"]),
        lambda n: n >= 2,
        "the refused revocation delivered again after back-off",
        WAIT,
    )
    bed.heal_node(node)
    wait_verified(kube_api, node)
    restored = _notice(notifying, notify.TYPE_RESTORED, node, HYPERWALL)
    assert restored["data"]["verified"] is True
    assert restored["data"]["reason"] == R.VERIFIED
    port = notifying.metrics_port
    assert (_metric(port, 'sod_attestation_notifications_total{result="delivered"}') or 0) >= 2
    assert (_metric(port, 'sod_attestation_notification_attempts_total{outcome="retry"}') or 0) >= 1
    assert _metric(port, 'sod_attestation_notifications_total{result="dropped"}') == 0
    assert _metric(port, "sod_attestation_verifier_ready") == 1
    bound = f'sod_attestation_freshness_bound_seconds{{profile="{HYPERWALL}"}}'
    assert _metric(port, bound) == FRESHNESS
    overdue = f'sod_attestation_evidence_overdue_nodes{{profile="{HYPERWALL}"}}'
    # Agents answer every second against a 10 s bound; a starved 2-core bed may lag, so only
    # that the gauge is served (its arithmetic: tests/unit/verifier/test_notify.py).
    assert _metric(port, overdue) in range(len(bed.nodes()) + 1)
