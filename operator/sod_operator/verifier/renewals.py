"""The fleet's expiry renewals, batched into one ConfigMap write (issue 17 item 3).

A round whose evidence says what the recorded evidence says is not written to the node's
status; `monitor.step` yields a `Renewal` instead, and says when one is *due* (a verdict has
spent half its lifetime). This batch keeps each node's newest renewal and tells the verifier
when to write them all at once (`RenewalList`, read by the operator):

* only when some renewal is due: a renewal that is not due moves nothing anyone waits for,
  it rides along with the next write;
* once the round is in (every node's evidence answers the newest nonce and the work queue
  is idle), or `window` seconds after the first due renewal when some node has not answered
  (silent, slow or broken);
* at most once per `window`: a fleet answering over several seconds costs a write per window,
  not one per node.

Thread-safe (workers offer, the housekeeping thread writes); the clock is passed in.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass

from sod_operator.api.v1alpha1.nodeattestation import Renewal, RenewalList


@dataclass(frozen=True)
class BatchSettings:
    window: float = 2.0
    """At most one write per this many seconds; a due renewal waits at most this long."""


class RenewalBatch:
    def __init__(self, settings: BatchSettings | None = None) -> None:
        self.settings = settings or BatchSettings()
        self._lock = threading.Lock()
        self._pending: dict[str, Renewal] = {}
        self._due: set[str] = set()
        self._due_since: float | None = None
        self._last_write = float("-inf")

    def offer(self, node: str, renewal: Renewal, due: bool, now: float) -> None:
        """A worker judged `node`: keep its renewal if newer; note whether it is due."""
        with self._lock:
            held = self._pending.get(node)
            if held is None or renewal.evidence_time >= held.evidence_time:
                self._pending[node] = renewal
            if due:
                self._due.add(node)
                if self._due_since is None:
                    self._due_since = now

    @property
    def due(self) -> bool:
        with self._lock:
            return bool(self._due)

    def wait(self, round_in: bool, now: float) -> float | None:
        """Seconds until a write is due (0: now; `round_in`: the round's answers are all
        judged); None when nothing is due."""
        s = self.settings
        with self._lock:
            if self._due_since is None:
                return None
            spaced = self._last_write + s.window - now
            if spaced > 0:
                return spaced
            if round_in:
                return 0.0
            return max(0.0, self._due_since + s.window - now)

    def merged(self, published: RenewalList, nodes: Collection[str]) -> RenewalList:
        """What to write: the published renewals with the newer pending ones, only for
        `nodes` (those with a NodeAttestation: a deleted node's renewal goes)."""
        with self._lock:
            out = {n: r for n, r in published.renewals.items() if n in nodes}
            for node, renewal in self._pending.items():
                held = out.get(node)
                if node in nodes and (held is None or renewal.evidence_time > held.evidence_time):
                    out[node] = renewal
        return RenewalList(renewals=dict(sorted(out.items())))

    def written(self, wrote: RenewalList, now: float) -> None:
        """`wrote` is published: drop what it holds (newer offers made meanwhile stay)."""
        with self._lock:
            self._last_write = now
            for node, renewal in wrote.renewals.items():
                if self._pending.get(node) == renewal:
                    del self._pending[node]
                    self._due.discard(node)
            self._due &= set(self._pending)
            self._due_since = now if self._due else None

    def failed(self, now: float) -> None:
        """The write failed: try again after a window (the status renewal is the fallback)."""
        with self._lock:
            self._last_write = now

    def forget(self, node: str) -> None:
        with self._lock:
            self._pending.pop(node, None)
            self._due.discard(node)
            if not self._due:
                self._due_since = None
