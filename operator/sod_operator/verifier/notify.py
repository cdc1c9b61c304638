"""Revocation notices: a signed CloudEvents webhook on every trust loss and restoration.

Pure part (payload, signature, retry delays) first; the shell (`Notifier`) below it. The
verifier hands notices over with `Notifier.notify`, which never blocks: a bounded queue feeds
one delivery thread, and a full queue drops the notice (counted). Events and metrics remain
the record; the webhook is for the people who must act.

Wire format: CloudEvents 1.0, structured mode (`Content-Type: application/cloudevents+json`).
Every request carries

    X-Sod-Timestamp: <unix seconds when this attempt was sent>
    X-Sod-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>." + raw body)>

A receiver recomputes the MAC over the raw body it received, compares in constant time, and
refuses timestamps further than a few minutes from its clock (a captured request cannot be
replayed later); the CloudEvent `id` lets it drop duplicates of a retried delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from sod_operator.api.v1alpha1.nodeattestation import NodeAttestationStatus
from sod_operator.attestation.monitor import Transition

log = logging.getLogger("sod.verifier.notify")

CONTENT_TYPE = "application/cloudevents+json"
TYPE_REVOKED = "dev.sod.trust.revoked"
TYPE_RESTORED = "dev.sod.trust.restored"
SIGNATURE_HEADER = "X-Sod-Signature"
TIMESTAMP_HEADER = "X-Sod-Timestamp"
DEFAULT_SOURCE = "/sod-operator/verifier"
REPLAY_TOLERANCE_SECONDS = 300


# -- pure


@dataclass(frozen=True)
class TrustNotice:
    """One profile's verdict on one node changed."""

    node: str
    profile: str
    verified: bool
    reason: str
    message: str
    verdict_time: datetime


def notices(
    node: str, transitions: Iterable[Transition], status: NodeAttestationStatus, now: datetime
) -> list[TrustNotice]:
    """The notices of one reconcile: one per changed verdict, worded from the new status."""
    verdicts = {v.profile: v for v in status.verdicts}
    out = []
    for t in transitions:
        v = verdicts.get(t.profile)
        out.append(
            TrustNotice(
                node=node,
                profile=t.profile,
                verified=t.verified,
                reason=str(t.reason),
                message=v.message if v is not None else "the profile or its policy was removed",
                verdict_time=v.last_transition_time if v is not None else now,
            )
        )
    return out


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cloudevent(notice: TrustNotice, source: str, event_id: str, now: datetime) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event for one notice."""
    return {
        "specversion": "1.0",
        "type": TYPE_RESTORED if notice.verified else TYPE_REVOKED,
        "source": source,
        "id": event_id,
        "time": _rfc3339(now),
        "subject": notice.node,
        "datacontenttype": "application/json",
        "data": {
            "node": notice.node,
            "profile": notice.profile,
            "verified": notice.verified,
            "reason": notice.reason,
            "message": notice.message,
            "verdictTime": _rfc3339(notice.verdict_time),
        },
    }


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Sod-Signature` value: the timestamp is inside the MAC, so it cannot be swapped."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    key: bytes,
    body: bytes,
    signature: str,
    timestamp: str,
    now: float,
    tolerance: float = REPLAY_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does (also the documented reference): MAC and timestamp both hold."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(key, ts, body), signature)


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): base, 2·base, 4·base … cap."""
    return float(min(cap, base * 2 ** (attempt - 1)))


def retryable(status: int) -> bool:
    """5xx, 408 and 429 may succeed later; any other 4xx will not (a wrong URL or key)."""
    return status >= 500 or status in (408, 429)


# -- shell


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    key: bytes
    timeout_seconds: float = 5.0
    ca_file: Path | None = None
    """PEM bundle the receiver's certificate must chain to (None: the system's trust store)."""
    source: str = DEFAULT_SOURCE
    max_attempts: int = 6
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    queue_size: int = 1000


@dataclass(frozen=True)
class NotifyMetrics:
    notifications: Counter
    """By result: delivered, failed (gave up after retries or a permanent error), dropped."""
    attempts: Counter
    """Every HTTP attempt, by outcome: ok, retry, error."""


class Notifier:
    """One delivery thread behind a bounded queue; `notify` never waits for the receiver."""

    def __init__(
        self,
        config: WebhookConfig,
        metrics: NotifyMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()
        self._ssl = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file is not None else None
        )
        self._thread = threading.Thread(target=self._run, name="verifier-notify", daemon=True)

    def start(self) -> Notifier:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def notify(self, items: Iterable[TrustNotice]) -> None:
        now = self.clock()
        for notice in items:
            event = cloudevent(notice, self.config.source, str(uuid.uuid4()), now)
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.metrics.notifications.labels("dropped").inc()
                log.warning("webhook queue full: dropped %s %s", event["type"], notice.node)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            result = self._deliver(event)
            self.metrics.notifications.labels(result).inc()

    def _deliver(self, event: Mapping[str, Any]) -> str:
        body = encode(event)
        for attempt in range(1, self.config.max_attempts + 1):
            status = self._post(body)
            if status is not None and 200 <= status < 300:
                self.metrics.attempts.labels("ok").inc()
                return "delivered"
            if status is not None and not retryable(status):
                self.metrics.attempts.labels("error").inc()
                log.error("webhook refused %s with HTTP %d; not retried", event["id"], status)
                return "failed"
            self.metrics.attempts.labels("retry").inc()
            delay = retry_delay(
                attempt, self.config.backoff_base_seconds, self.config.backoff_cap_seconds
            )
            if attempt < self.config.max_attempts and self._stop.wait(delay):
                break
        log.error("webhook gave up on %s (%s)", event["id"], event["type"])
        return "failed"

    def _post(self, body: bytes) -> int | None:
        """One signed attempt: the HTTP status, or None when no answer came."""
        ts = int(self.clock().timestamp())
        request = urllib.request.Request(
            self.config.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": CONTENT_TYPE,
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(self.config.key, ts, body),
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.config.timeout_seconds, context=self._ssl
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (urllib.error.URLError, OSError, ValueError) as err:
            log.warning("webhook %s unreachable: %s", self.config.url, err)
            return None
