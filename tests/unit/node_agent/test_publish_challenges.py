"""The node-agent reads the verifier's published nonces from a ConfigMap, by name.

Covers: the informer's namespaced path and name selector (from `--namespace` and
`--challenges`), a listing, a change and a deletion of the ConfigMap through the real
`Informer` on a recorded client, each waking the main loop; a missing ConfigMap, a broken
or missing `challenges.json` and an unreadable ConfigMap all mean "no nonce" (never a crash);
a direct read before the watch has it. Not covered: a real apiserver (tests/e2e).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sod_node_agent.main import build_parser
from sod_node_agent.publish import Publisher
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_CONFIGMAP,
    CHALLENGES_KEY,
    TRUST_NAMESPACE,
    Challenge,
    ChallengeList,
)
from sod_operator.kube import ApiError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
N1, N2 = "11" * 32, "22" * 32
PATH = "/api/v1/namespaces/trust/configmaps"


def _list(*nonces: str) -> ChallengeList:
    return ChallengeList(
        challenges=[
            Challenge(nonce=n, issued_time=NOW - timedelta(seconds=10 * i))
            for i, n in enumerate(nonces)
        ]
    )


def _cm(rv: int, data: dict[str, str] | None) -> dict[str, Any]:
    meta = {"name": "nonces", "namespace": "trust", "resourceVersion": str(rv)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _published(rv: int, challenges: ChallengeList) -> dict[str, Any]:
    return _cm(rv, {CHALLENGES_KEY: challenges.model_dump_json(by_alias=True)})


class _Client:
    """Records the informer's requests; serves one listing, then the given watch events."""

    def __init__(self, items: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.items = items
        self.events = events
        self.requests: list[tuple[str, str | None]] = []
        self.got: dict[str, Any] | None = None
        self.get_error: ApiError | None = None
        self.stop: Any = None
        """Set when the events are served (the watch loop then ends)."""

    def list(self, path: str, label_selector: str | None, field_selector: str | None) -> Any:
        del label_selector
        self.requests.append((path, field_selector))
        return {"metadata": {"resourceVersion": "5"}, "items": self.items}

    def watch(self, path: str, rv: str, timeout: int, ls: Any, fs: Any) -> Iterator[Any]:
        del path, rv, timeout, ls, fs
        yield from self.events
        self.stop.set()

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        self.requests.append((path, None))
        if self.get_error is not None:
            raise self.get_error
        return self.got


def _publisher(client: _Client) -> Publisher:
    fake: Any = client
    pub = Publisher(fake, "node-1", namespace="trust", challenges="nonces")
    client.stop = pub._cm_informer.stop_event
    return pub


def _relist(pub: Publisher) -> None:
    pub._cm_informer._relist()


def test_the_configmap_is_listed_and_watched_by_name_in_its_namespace() -> None:
    client = _Client([_published(3, _list(N1))], [])
    pub = _publisher(client)
    _relist(pub)
    assert client.requests == [(PATH, "metadata.name=nonces")]
    assert pub._cm_informer.missing_is_empty
    newest = pub.challenges().newest
    assert newest is not None
    assert newest.nonce == N1
    assert client.requests == [(PATH, "metadata.name=nonces")]  # no direct read once known


def test_a_new_nonce_wakes_the_agent() -> None:
    events = [{"type": "MODIFIED", "object": _published(4, _list(N2, N1))}]
    client = _Client([_published(3, _list(N1))], events)
    pub = _publisher(client)
    _relist(pub)
    pub.changed.clear()
    pub._cm_informer._watch("5")
    assert pub.changed.is_set()
    assert [c.nonce for c in pub.challenges().challenges] == [N2, N1]


def test_a_deleted_configmap_means_no_nonce() -> None:
    pub = _publisher(_Client([], []))
    pub._on_challenges("ADDED", _published(3, _list(N1)))
    pub.changed.clear()
    pub._on_challenges("DELETED", _published(3, _list(N1)))
    assert pub.changed.is_set()
    assert pub.challenges().newest is None


def test_a_missing_configmap_means_no_nonce_without_reading_it_again() -> None:
    client = _Client([], [])
    pub = _publisher(client)
    _relist(pub)
    assert pub.challenges().newest is None
    assert client.requests == [(PATH, "metadata.name=nonces")]


@pytest.mark.parametrize(
    "data",
    [{CHALLENGES_KEY: "{not json"}, {CHALLENGES_KEY: '{"challenges": [{"nonce": "xyz"}]}'}, {}],
    ids=["not-json", "not-a-challenge-list", "no-key"],
)
def test_a_broken_configmap_is_logged_and_means_no_nonce(
    data: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    pub = _publisher(_Client([], []))
    pub._on_challenges("ADDED", _published(3, _list(N1)))
    with caplog.at_level(logging.WARNING, logger="sod_node_agent.publish"):
        pub._on_challenges("MODIFIED", _cm(4, data))
    assert pub.challenges().newest is None
    assert CHALLENGES_KEY in caplog.text


def test_before_the_watch_the_configmap_is_read_directly() -> None:
    client = _Client([], [])
    client.got = _published(3, _list(N1))
    pub = _publisher(client)
    newest = pub.challenges().newest
    assert newest is not None
    assert newest.nonce == N1
    assert client.requests == [(f"{PATH}/nonces", None)]
    pub.challenges()
    assert len(client.requests) == 1  # kept until the watch delivers


def test_an_unreadable_configmap_means_no_nonce_for_now(caplog: pytest.LogCaptureFixture) -> None:
    client = _Client([], [])
    client.get_error = ApiError("GET", f"{PATH}/nonces", 403, {"reason": "Forbidden"})
    pub = _publisher(client)
    with caplog.at_level(logging.WARNING, logger="sod_node_agent.publish"):
        assert pub.challenges().newest is None
    assert "Forbidden" in caplog.text
    pub.challenges()
    assert len(client.requests) == 1  # not asked every round: the watch brings the list
    client.items = [_published(3, _list(N2))]
    _relist(pub)
    newest = pub.challenges().newest
    assert newest is not None
    assert newest.nonce == N2


def test_flags_and_environment_name_the_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["--node", "n"])
    assert (args.namespace, args.challenges) == (TRUST_NAMESPACE, CHALLENGES_CONFIGMAP)
    monkeypatch.setenv("SOD_NAMESPACE", "trust")
    monkeypatch.setenv("SOD_CHALLENGES_CONFIGMAP", "nonces")
    args = build_parser().parse_args(["--node", "n"])
    assert (args.namespace, args.challenges) == ("trust", "nonces")
    args = build_parser().parse_args(["--namespace", "a", "--challenges", "b"])
    assert (args.namespace, args.challenges) == ("a", "b")
