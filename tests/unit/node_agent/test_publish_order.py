"""The node-agent's view of its NodeAttestation keeps the newest version.

The verifier judges evidence within milliseconds and writes the status (e.g. its enrollment
challenge, or a verdict), so the watch can deliver that status before the agent's own write
returns. Found by the verifier fail-over trials (tests/e2e/test_reliability_verifier.py):
storing the older write response over it hid what the verifier wrote, and the agent waited
for a change that had already happened.
"""

from __future__ import annotations

from typing import Any

from sod_node_agent.publish import Publisher
from sod_node_agent.schedule import AgentState, plan

CHALLENGED = {
    "state": "Challenged",
    "ekCertificateSha256": "a" * 64,
    "akName": "000b" + "b" * 64,
    "credentialBlob": "QUJD",
    "encryptedSecret": "REVG",
    "credentialSha256": "c" * 64,
    "challengedTime": "2026-01-01T00:00:00Z",
}


def _obj(rv: int, enrollment: dict[str, Any] | None = None) -> dict[str, Any]:
    status = {"enrollment": enrollment} if enrollment else {}
    return {
        "apiVersion": "sod.dev/v1alpha1",
        "kind": "NodeAttestation",
        "metadata": {"name": "node-1", "resourceVersion": str(rv), "generation": 1},
        "spec": {},
        "status": status,
    }


class _Client:
    """Answers the agent's spec write with the version it wrote (older than the watch's)."""

    def __init__(self, publisher: list[Publisher]) -> None:
        self.publisher = publisher

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        del path, body
        self.publisher[0]._on_event("MODIFIED", _obj(11, CHALLENGED))  # the verifier, meanwhile
        return _obj(10)


def test_a_write_response_older_than_the_watch_does_not_hide_the_verifiers_status() -> None:
    holder: list[Publisher] = []
    client: Any = _Client(holder)
    pub = Publisher(client, "node-1")
    holder.append(pub)
    pub._on_event("ADDED", _obj(9))
    existing = pub.latest()
    assert existing is not None
    pub.write(existing.spec, existing)
    latest = pub.latest()
    assert latest is not None
    assert latest.resource_version == "11"
    decision = plan(True, True, latest.status, None, AgentState(), "c", 0, 10)
    assert decision.activate  # the enrollment challenge is answered, not waited for


def test_a_deletion_is_stored_whatever_the_version() -> None:
    client: Any = _Client([])
    pub = Publisher(client, "node-1")
    pub._on_event("ADDED", _obj(9))
    pub._on_event("DELETED", _obj(9))
    assert pub._latest is not None
    assert pub._latest.obj is None
