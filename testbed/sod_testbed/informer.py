"""A list+watch cache of one collection, as client-go's informers (used by the virt-handler
player): a dict store with secondary indexes, re-listing on a broken watch or 410 Gone, calling
`on_change` after every event. Objects a caller just wrote go in with `put` (newer
resourceVersion wins), so a pass never acts twice on its own stale view.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi

log = logging.getLogger("sod.informer")


def key_of(obj: JsonObj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _rv(obj: JsonObj) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion", "0"))
    except ValueError:
        return 0


IndexFn = Callable[[JsonObj], "str | None"]


class Informer:
    """List + watch one collection into a dict store with secondary indexes (as client-go's
    indexers); calls `on_change` after every event."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        on_change: Callable[[], None],
        stop: threading.Event,
        label_selector: str | None = None,
        indexers: dict[str, IndexFn] | None = None,
    ):
        self.api = api
        self.path = path
        self.label_selector = label_selector
        self.on_change = on_change
        self.stop_event = stop
        self.store: dict[tuple[str, str], JsonObj] = {}
        self.indexers = indexers or {}
        self.indices: dict[str, dict[str, set[tuple[str, str]]]] = {n: {} for n in self.indexers}
        self.synced = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def items(self) -> list[JsonObj]:
        with self.lock:
            return list(self.store.values())

    def get(self, namespace: str, name: str) -> JsonObj | None:
        with self.lock:
            return self.store.get((namespace, name))

    def by_index(self, index: str, value: str) -> list[JsonObj]:
        with self.lock:
            return [self.store[k] for k in self.indices[index].get(value, ())]

    def put(self, obj: JsonObj) -> None:
        """Record an object we just wrote (newer resourceVersion wins)."""
        with self.lock:
            self._set(obj)

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self._drop((namespace, name))

    # Callers hold self.lock.
    def _set(self, obj: JsonObj) -> None:
        key = key_of(obj)
        old = self.store.get(key)
        if old is not None and _rv(obj) < _rv(old):
            return
        self._drop(key)
        self.store[key] = obj
        for name, fn in self.indexers.items():
            value = fn(obj)
            if value is not None:
                self.indices[name].setdefault(value, set()).add(key)

    def _drop(self, key: tuple[str, str]) -> None:
        old = self.store.pop(key, None)
        if old is None:
            return
        for name, fn in self.indexers.items():
            value = fn(old)
            if value is not None:
                keys = self.indices[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self.indices[name][value]

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                listing = self.api.list(self.path, self.label_selector)
                with self.lock:
                    self.store = {}
                    self.indices = {n: {} for n in self.indexers}
                    for obj in listing.get("items", []):
                        self._set(obj)
                self.synced.set()
                self.on_change()
                self._watch(listing["metadata"]["resourceVersion"])
            except ApiError as err:
                if not self.stop_event.is_set():
                    log.warning("informer %s: %s; re-listing", self.path, err)
                    self.stop_event.wait(1.0)
            except Exception:  # keep the informer alive whatever happens; the loop re-lists
                if not self.stop_event.is_set():
                    log.exception("informer %s failed; re-listing", self.path)
                    self.stop_event.wait(1.0)

    def _watch(self, rv: str) -> None:
        while not self.stop_event.is_set():
            for event in self.api.watch(self.path, rv, label_selector=self.label_selector):
                etype = event.get("type")
                obj = event.get("object", {})
                if etype == "ERROR":
                    return  # e.g. 410 Gone: re-list
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if etype == "BOOKMARK":
                    continue
                with self.lock:
                    if etype == "DELETED":
                        self._drop(key_of(obj))
                    else:
                        self._set(obj)
                self.on_change()
            # The server ended the watch (timeout) or it broke: continue from the last version.
            self.stop_event.wait(0.05)


def label_index(key: str) -> IndexFn:
    """An indexer by the value of one label."""
    return lambda obj: (obj["metadata"].get("labels") or {}).get(key)
