"""The node-agent's view of its NodeAttestation keeps the newest version.

The verifier consumes evidence within milliseconds and issues the next nonce, so the watch
can deliver that status before the agent's own write returns. Found by the verifier
fail-over trials (tests/e2e/test_reliability_verifier.py): storing the older write response
over it hid the new nonce, and the agent waited until its verdict expired.
"""

from __future__ import annotations

from typing import Any

from sod_node_agent.publish import Publisher

N1, N2 = "11" * 32, "22" * 32


def _obj(rv: int, nonce: str) -> dict[str, Any]:
    return {
        "apiVersion": "sod.dev/v1alpha1",
        "kind": "NodeAttestation",
        "metadata": {"name": "node-1", "resourceVersion": str(rv), "generation": 1},
        "spec": {},
        "status": {"challenge": {"nonce": nonce, "issuedTime": "2026-01-01T00:00:00Z"}},
    }


class _Client:
    """Answers the agent's spec write with the version it wrote (older than the watch's)."""

    def __init__(self, publisher: list[Publisher]) -> None:
        self.publisher = publisher

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        del path, body
        self.publisher[0]._on_event("MODIFIED", _obj(11, N2))  # the verifier, meanwhile
        return _obj(10, N1)


def test_a_write_response_older_than_the_watch_does_not_hide_the_new_nonce() -> None:
    holder: list[Publisher] = []
    client: Any = _Client(holder)
    pub = Publisher(client, "node-1")
    holder.append(pub)
    pub._on_event("ADDED", _obj(9, N1))
    existing = pub.latest()
    assert existing is not None
    pub.write(existing.spec, existing)
    latest = pub.latest()
    assert latest is not None
    assert latest.resource_version == "11"
    assert latest.status.challenge is not None
    assert latest.status.challenge.nonce == N2


def test_a_deletion_is_stored_whatever_the_version() -> None:
    client: Any = _Client([])
    pub = Publisher(client, "node-1")
    pub._on_event("ADDED", _obj(9, N1))
    pub._on_event("DELETED", _obj(9, N1))
    assert pub._latest is not None
    assert pub._latest.obj is None
