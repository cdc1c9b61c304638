"""One informer: list, then watch from the list's resourceVersion, into a local cache.

* The cache is keyed by (namespace, name), with optional secondary indexes (client-go's
  indexers) and an optional `transform` of what is kept (a large list keeps only what it needs).
* Watch events carry bookmarks (which only move the resourceVersion on). When the server
  ends a watch, the next one starts where it left off; a 410 Gone (the version was compacted
  away) lists again at once; any other failure lists again after an exponential back-off.
* A (re)list reports its differences to the cache as events: ADDED for new objects, MODIFIED
  for changed ones, DELETED (with the last cached object; only its metadata name and namespace
  when a `transform` is set) for vanished ones; then SYNCED with `{"items": [...]}`.
* `handler(type, object)` is called after the cache took the change, outside its lock, from the
  informer's thread. A watch event older than the cached object (our own newer write, `put`)
  does not roll the cache back, but is still reported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sod_operator.kube.client import JsonObj, KubeClient
from sod_operator.kube.errors import ApiError
from sod_operator.kube.objects import ObjectKey, object_key, resource_version
from sod_operator.kube.workqueue import Backoff

log = logging.getLogger("sod.kube.informer")

Handler = Callable[[str, JsonObj], None]
IndexFn = Callable[[JsonObj], "str | None"]
SYNCED = "SYNCED"
RESTART_PAUSE = 0.05
"""Between one watch's end and the next (a server that ends watches at once costs no CPU)."""


class Informer:
    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        handler: Handler | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: dict[str, IndexFn] | None = None,
        transform: Callable[[JsonObj], Any] | None = None,
        stop: threading.Event | None = None,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        missing_is_empty: bool = False,
    ) -> None:
        self.client = client
        self.missing_is_empty = missing_is_empty
        """A 404 on the list (e.g. the CRD is not installed) means "none of them": the cache is
        emptied and SYNCED sent, so a consumer that must fail closed judges on it."""
        self.path = path
        self.handler = handler
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.indexers = indexers or {}
        self.transform = transform
        self.stop_event = stop or threading.Event()
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff(base=0.2, cap=30.0)
        self.synced = threading.Event()
        """Set once the first list is in the cache."""
        self.lock = threading.Lock()
        self._store: dict[ObjectKey, Any] = {}
        self._versions: dict[ObjectKey, int] = {}
        self._indices: dict[str, dict[str, set[ObjectKey]]] = {n: {} for n in self.indexers}
        self._indexed: dict[ObjectKey, dict[str, str]] = {}
        """Each cached key's value in each index (what to remove when it changes)."""
        self.thread = threading.Thread(target=self.run, name=f"informer {path}", daemon=True)
        self.pause: Callable[[float], object] = self.stop_event.wait
        """How the informer waits out a back-off (interrupted by `stop`)."""

    # -- lifecycle

    def start(self) -> Informer:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current watch event; `client.close_watches()` ends the stream now."""
        self.stop_event.set()

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    # -- the cache

    def items(self) -> list[Any]:
        with self.lock:
            return list(self._store.values())

    def keys(self) -> list[ObjectKey]:
        with self.lock:
            return list(self._store)

    def get(self, namespace: str, name: str) -> Any | None:
        with self.lock:
            return self._store.get((namespace, name))

    def by_index(self, index: str, value: str) -> list[Any]:
        with self.lock:
            return [self._store[k] for k in self._indices[index].get(value, ())]

    def put(self, obj: JsonObj) -> None:
        """Record an object we just wrote (a newer resourceVersion wins)."""
        with self.lock:
            self._set(obj)

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self._drop((namespace, name))

    # Callers hold self.lock.
    def _set(self, obj: JsonObj) -> bool:
        key = object_key(obj)
        rv = resource_version(obj)
        if key in self._versions and rv < self._versions[key]:
            return False
        self._drop(key)
        self._store[key] = self.transform(obj) if self.transform else obj
        self._versions[key] = rv
        values = {n: v for n, fn in self.indexers.items() if (v := fn(obj)) is not None}
        for name, value in values.items():
            self._indices[name].setdefault(value, set()).add(key)
        if values:
            self._indexed[key] = values
        return True

    def _drop(self, key: ObjectKey) -> Any | None:
        old = self._store.pop(key, None)
        self._versions.pop(key, None)
        for name, value in self._indexed.pop(key, {}).items():
            keys = self._indices[name][value]
            keys.discard(key)
            if not keys:
                del self._indices[name][value]
        return old

    # -- the loop

    def run(self) -> None:
        """List and watch until stopped (the informer's thread; callable directly too)."""
        failures = 0
        while not self.stop_event.is_set():
            try:
                rv = self._relist()
                failures = 0
                self._watch(rv)
            except ApiError as err:
                if err.gone:
                    continue  # the version was compacted away: list again, at once
                failures = self._pause(failures, err)
            except Exception as err:  # keep the informer alive whatever happens: list again
                failures = self._pause(failures, err)

    def _pause(self, failures: int, err: Exception) -> int:
        if self.stop_event.is_set():
            return failures
        failures += 1
        delay = self.backoff.delay(failures)
        log.warning("informer %s: %s; listing again in %.1f s", self.path, err, delay)
        self.pause(delay)
        return failures

    def _relist(self) -> str:
        try:
            listing = self.client.list(self.path, self.label_selector, self.field_selector)
        except ApiError as err:
            if not (err.not_found and self.missing_is_empty):
                raise
            self._apply_listing({"items": []})
            raise  # and list again after a back-off: the resource may be installed later
        return self._apply_listing(listing)

    def _apply_listing(self, listing: JsonObj) -> str:
        items = [i for i in listing.get("items") or [] if isinstance(i, dict)]
        events: list[tuple[str, Any]] = []
        with self.lock:
            listed = {object_key(i) for i in items}
            for key in set(self._store) - listed:
                last = self._drop(key)
                events.append(("DELETED", self._tombstone(key) if self.transform else last))
            for obj in items:
                key = object_key(obj)
                if key not in self._versions:
                    events.append(("ADDED", obj))
                elif self._versions[key] != resource_version(obj):
                    events.append(("MODIFIED", obj))
                else:
                    continue
                self._versions.pop(key, None)  # a list is the truth, older or not
                self._set(obj)
        self.synced.set()
        for etype, obj in events:
            self._notify(etype, obj)
        self._notify(SYNCED, {"items": items})
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    @staticmethod
    def _tombstone(key: ObjectKey) -> JsonObj:
        meta = {"name": key[1], **({"namespace": key[0]} if key[0] else {})}
        return {"metadata": meta}

    def _watch(self, rv: str) -> None:
        while not self.stop_event.is_set():
            for event in self.client.watch(
                self.path, rv, self.watch_timeout, self.label_selector, self.field_selector
            ):
                if self.stop_event.is_set():
                    return
                etype = str(event.get("type"))
                obj = event.get("object") or {}
                if etype == "ERROR":  # a Status: 410 Gone, or something the list must fix
                    raise ApiError("WATCH", self.path, int(obj.get("code") or 500), obj)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if etype == "BOOKMARK":
                    continue
                with self.lock:
                    if etype == "DELETED":
                        self._drop(object_key(obj))
                    else:
                        self._set(obj)
                self._notify(etype, obj)
            # The server ended the watch (timeout) or it broke: go on from the last version.
            self.stop_event.wait(RESTART_PAUSE)

    def _notify(self, etype: str, obj: JsonObj) -> None:
        if self.handler is None:
            return
        try:
            self.handler(etype, obj)
        except Exception:  # a handler's bug must not stop the cache
            log.exception("informer %s: handler failed on %s", self.path, etype)
