"""The informer (`sod_operator.kube.Informer`) against a scripted client: no apiserver.

Covers: the first list fills the cache and reports ADDED then SYNCED; watch events update the
cache and reach the handler; a bookmark moves the resourceVersion the next watch starts from;
a 410 Gone lists again at once and reports what changed meanwhile (DELETED included); other
failures list again after an exponential back-off that a success resets; a stale watch event
does not roll back our own newer write; indexes follow changes. The real apiserver path is
every e2e test (the simulator, the verifier and the node-agent all run on it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from sod_operator.kube import ApiError, Informer
from sod_operator.kube.workqueue import Backoff

Json = dict[str, Any]
PATH = "/api/v1/pods"


def pod(name: str, rv: int, node: str = "n1", ns: str = "t") -> Json:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)},
            "spec": {"nodeName": node}}  # fmt: skip


def event(etype: str, obj: Json) -> Json:
    return {"type": etype, "object": obj}


class ScriptedClient:
    """Answers lists and watches from scripts; stops the informer when the script runs out."""

    def __init__(self, lists: list[Json | Exception], watches: list[list[Json] | Exception]):
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.stop = threading.Event()

    def list(self, path: str, label_selector: str | None, field_selector: str | None) -> Json:
        if not self.lists:
            self.stop.set()
            raise ApiError.no_answer("GET", path, RuntimeError("script over"))
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def watch(self, path: str, rv: str, *args: Any) -> Iterator[Json]:
        self.watched_from.append(rv)
        if not self.watches:
            self.stop.set()
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


def listing(rv: int, *items: Json) -> Json:
    return {"metadata": {"resourceVersion": str(rv)}, "items": list(items)}


def run(client: ScriptedClient, **kw: Any) -> tuple[Informer, list[tuple[str, Any]], list[float]]:
    seen: list[tuple[str, Any]] = []
    informer = Informer(
        client, PATH, stop=client.stop,  # type: ignore[arg-type]
        handler=lambda t, o: seen.append((t, o)), **kw,
    )  # fmt: skip
    pauses: list[float] = []
    informer.pause = pauses.append
    informer.run()
    return informer, seen, pauses


def names(seen: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    return [(t, o["metadata"]["name"] if t != "SYNCED" else str(len(o["items"]))) for t, o in seen]


def test_list_then_watch_with_bookmarks_and_a_relist_after_410() -> None:
    client = ScriptedClient(
        lists=[listing(10, pod("a", 5), pod("b", 6)), listing(30, pod("a", 21), pod("c", 25))],
        watches=[
            [event("MODIFIED", pod("b", 11)), event("BOOKMARK", pod("", 15))],
            [event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})],
        ],
    )
    informer, seen, pauses = run(client)
    assert names(seen) == [
        ("ADDED", "a"), ("ADDED", "b"), ("SYNCED", "2"),
        ("MODIFIED", "b"),
        # the relist after 410: b vanished, a changed, c is new
        ("DELETED", "b"), ("MODIFIED", "a"), ("ADDED", "c"), ("SYNCED", "2"),
    ]  # fmt: skip
    # The second watch starts at the bookmark's version, not at the last object's.
    assert client.watched_from[:3] == ["10", "15", "30"]
    assert pauses == []  # a 410 is routine: no back-off
    assert sorted(p["metadata"]["name"] for p in informer.items()) == ["a", "c"]
    assert informer.get("t", "a")["metadata"]["resourceVersion"] == "21"
    assert informer.synced.is_set()


def test_failures_back_off_exponentially_and_a_success_resets_the_back_off() -> None:
    down = ApiError.no_answer("GET", PATH, ConnectionRefusedError())
    client = ScriptedClient(
        lists=[down, down, down, listing(10, pod("a", 5)), down],
        watches=[ApiError("GET", PATH, 500, b"{}")],
    )
    backoff = Backoff(base=0.2, cap=30.0)
    _, seen, pauses = run(client, backoff=backoff)
    # three failed lists, then a failed watch: the count starts again after the good list
    assert pauses[:4] == [backoff.delay(1), backoff.delay(2), backoff.delay(3), backoff.delay(1)]
    assert names(seen) == [("ADDED", "a"), ("SYNCED", "1")]


def test_a_stale_watch_event_does_not_roll_back_our_own_write_but_is_reported() -> None:
    client = ScriptedClient(lists=[listing(10, pod("a", 5))], watches=[])
    informer, _, _ = run(client)
    informer.put(pod("a", 40, node="n2"))  # what our write returned
    client.watches = [[event("MODIFIED", pod("a", 30, node="n1"))]]
    client.stop.clear()
    seen: list[tuple[str, Any]] = []
    informer.handler = lambda t, o: seen.append((t, o))
    informer._watch("10")
    assert informer.get("t", "a")["spec"]["nodeName"] == "n2"
    assert names(seen) == [("MODIFIED", "a")]


def test_indexes_follow_changes_and_deletions() -> None:
    client = ScriptedClient(
        lists=[listing(10, pod("a", 5, node="n1"), pod("b", 6, node="n1"))],
        watches=[[event("MODIFIED", pod("a", 11, node="n2")), event("DELETED", pod("b", 12))]],
    )
    informer, _, _ = run(client, indexers={"node": lambda o: o["spec"]["nodeName"]})
    assert [p["metadata"]["name"] for p in informer.by_index("node", "n2")] == ["a"]
    assert informer.by_index("node", "n1") == []


def test_a_transform_keeps_less_and_a_relist_deletion_reports_a_tombstone() -> None:
    client = ScriptedClient(
        lists=[listing(10, pod("a", 5)), listing(20)],
        watches=[ApiError("WATCH", PATH, 410, {"reason": "Expired"})],
    )
    informer, seen, _ = run(client, transform=lambda o: o["spec"]["nodeName"])
    assert seen[-2] == ("DELETED", {"metadata": {"name": "a", "namespace": "t"}})
    assert informer.items() == []


def test_a_missing_resource_is_none_of_them_when_asked_and_listed_again_later() -> None:
    missing = ApiError("GET", PATH, 404, b'{"reason": "NotFound"}')
    client = ScriptedClient(lists=[missing, listing(10, pod("a", 5))], watches=[])
    _, seen, pauses = run(client, missing_is_empty=True)
    # an empty SYNCED at once (a consumer that fails closed can judge), then the real list
    assert names(seen) == [("SYNCED", "0"), ("ADDED", "a"), ("SYNCED", "1")]
    assert len(pauses) >= 1


def test_a_missing_resource_is_an_error_by_default() -> None:
    missing = ApiError("GET", PATH, 404, b'{"reason": "NotFound"}')
    client = ScriptedClient(lists=[missing], watches=[])
    informer, seen, _ = run(client)
    assert seen == []
    assert not informer.synced.is_set()
