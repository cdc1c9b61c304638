"""The trust webhook: CloudEvents payload, HMAC signature and replay window, retry decisions,
evidence-age metrics (pure), then delivery over TLS to a receiver on 127.0.0.1 whose
certificate comes from the test bed's PKI: 503s retried with back-off, a 400 not retried, a
full queue dropping (counted), and a verifier reconcile sending its revocation and restoration.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Counter
from sod_operator.api.v1alpha1.nodeattestation import (
    AttestationReason,
    NodeAttestationStatus,
    ProfileVerdict,
    VerdictResult,
)
from sod_operator.attestation.monitor import Transition
from sod_operator.verifier import notify
from sod_operator.verifier.controller import BundleSource, Verifier
from sod_operator.verifier.metrics import EvidenceAge, evidence_ages
from sod_operator.verifier.notify import (
    Notifier,
    NotifyMetrics,
    TrustNotice,
    WebhookConfig,
)
from sod_testbed.pki import CertificateAuthority

from tests.unit.attestation.conftest import GOLDEN, step
from tests.unit.attestation.golden import SeededEntropy
from tests.unit.verifier.test_controller import FakeIO, _obj, _profile

KEY = b"webhook-test-key"
T0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
NOTICE = TrustNotice("node-1", "tpm", False, "PcrValueMismatch", "PCR 7 differs", T0)


def test_the_payload_is_a_structured_cloudevent() -> None:
    event = notify.cloudevent(NOTICE, "/sod/verifier", "id-1", T0)
    assert event == {
        "specversion": "1.0",
        "type": "dev.sod.trust.revoked",
        "source": "/sod/verifier",
        "id": "id-1",
        "time": "2026-12-06T12:00:00Z",
        "subject": "node-1",
        "datacontenttype": "application/json",
        "data": {
            "node": "node-1",
            "profile": "tpm",
            "verified": False,
            "reason": "PcrValueMismatch",
            "message": "PCR 7 differs",
            "verdictTime": "2026-12-06T12:00:00Z",
        },
    }
    restored = TrustNotice("node-1", "tpm", True, "Verified", "", T0)
    assert notify.cloudevent(restored, "s", "i", T0)["type"] == "dev.sod.trust.restored"
    assert json.loads(notify.encode(event)) == event


def test_the_signature_covers_body_and_timestamp_within_a_replay_window() -> None:
    body = notify.encode(notify.cloudevent(NOTICE, "s", "i", T0))
    ts = 1_800_000_000
    sig = notify.sign(KEY, ts, body)
    assert sig.startswith("sha256=")
    assert len(sig) == 7 + 64
    assert notify.verify(KEY, body, sig, str(ts), now=ts + 10)
    assert not notify.verify(KEY, body + b" ", sig, str(ts), now=ts)  # body changed
    assert not notify.verify(KEY, body, sig, str(ts + 1), now=ts)  # timestamp swapped
    assert not notify.verify(b"other", body, sig, str(ts), now=ts)  # wrong key
    assert not notify.verify(KEY, body, sig, str(ts), now=ts + 301)  # replayed later
    assert not notify.verify(KEY, body, sig, "soon", now=ts)


def test_retries_back_off_exponentially_up_to_a_cap_and_only_when_useful() -> None:
    assert [notify.retry_delay(a, 1.0, 10.0) for a in range(1, 6)] == [1, 2, 4, 8, 10]
    assert all(notify.retryable(s) for s in (500, 502, 503, 408, 429))
    assert not any(notify.retryable(s) for s in (400, 401, 403, 404, 410))


def test_notices_are_worded_from_the_new_verdicts() -> None:
    status = NodeAttestationStatus(
        verdicts=[
            ProfileVerdict(
                profile="tpm",
                result=VerdictResult.REJECTED,
                reason=AttestationReason.PCR_VALUE_MISMATCH,
                message="PCR 7 differs",
                last_transition_time=T0,
            )
        ]
    )
    got = notify.notices(
        "node-1",
        [
            Transition("tpm", False, AttestationReason.PCR_VALUE_MISMATCH),
            Transition("gone", False, AttestationReason.NO_ATTESTATION_POLICY),
        ],
        status,
        T0 + dt.timedelta(seconds=5),
    )
    assert got[0] == NOTICE
    assert got[1].profile == "gone"
    assert got[1].verdict_time == T0 + dt.timedelta(seconds=5)


def test_evidence_ages_count_nodes_past_each_profiles_freshness_bound() -> None:
    def status(*verdicts: tuple[str, int]) -> dict[str, Any]:
        return {
            "verdicts": [
                {"profile": p, "evidenceTime": (T0 - dt.timedelta(seconds=age)).isoformat()}
                for p, age in verdicts
            ]
        }

    statuses = [status(("tpm", 30), ("sev", 500)), status(("tpm", 90)), {}, {"verdicts": None}]
    ages = evidence_ages(statuses, {"tpm": 60, "sev": 600, "idle": 60}, T0)
    assert ages == {
        "tpm": EvidenceAge(oldest_seconds=90, overdue_nodes=1, freshness_seconds=60),
        "sev": EvidenceAge(oldest_seconds=500, overdue_nodes=0, freshness_seconds=600),
        "idle": EvidenceAge(oldest_seconds=0, overdue_nodes=0, freshness_seconds=60),
    }


# -- delivery to a local TLS receiver


@dataclass
class Receiver:
    url: str
    ca_file: Path
    statuses: list[int] = field(default_factory=list)
    """HTTP status to answer, in order (then 200)."""
    answer: Callable[[bytes], int] | None = None
    """Or: the status to answer to this body (instead of `statuses`)."""
    metrics_port: int = 0
    """The /metrics port of the verifier that sends to this receiver (e2e only)."""
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.got) >= count, timeout), self.got
            return list(self.got)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    ca = CertificateAuthority.create(dt.datetime.now(dt.UTC))
    key, cert = ca.issue(dt.datetime.now(dt.UTC), "receiver", server_ips=("127.0.0.1",))
    pair = ca.write_issued(tmp_path, "receiver", key, cert)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = state["r"]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with r.arrived:
                r.got.append(({k: v for k, v in self.headers.items()}, body))
                if r.answer is not None:
                    code = r.answer(body)
                else:
                    code = r.statuses.pop(0) if r.statuses else 200
                r.arrived.notify_all()
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state["r"] = Receiver(f"https://127.0.0.1:{server.server_port}/hook", ca_file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()


def _metrics() -> NotifyMetrics:
    r = CollectorRegistry()
    return NotifyMetrics(
        Counter("n", "", ["result"], registry=r), Counter("a", "", ["outcome"], registry=r)
    )


def _count(counter: Counter, label: str) -> float:
    return float(counter.labels(label)._value.get())


def _config(receiver: Receiver, **kw: Any) -> WebhookConfig:
    kw.setdefault("backoff_base_seconds", 0.01)
    return WebhookConfig(url=receiver.url, key=KEY, ca_file=receiver.ca_file, **kw)


def _wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_a_notice_is_retried_after_503s_and_arrives_signed(receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    m = _metrics()
    notifier = Notifier(_config(receiver), m).start()
    try:
        notifier.notify([NOTICE])
        got = receiver.wait_for(3)
        _wait_until(lambda: _count(m.notifications, "delivered") == 1)
    finally:
        notifier.stop()
    assert _count(m.attempts, "retry") == 2
    assert _count(m.attempts, "ok") == 1
    ids = set()
    for headers, body in got:
        assert headers["Content-Type"] == "application/cloudevents+json"
        assert notify.verify(
            KEY, body, headers["X-Sod-Signature"], headers["X-Sod-Timestamp"], now=time.time()
        )
        event = json.loads(body)
        ids.add(event["id"])
        assert event["type"] == "dev.sod.trust.revoked"
        assert event["data"]["node"] == "node-1"
    assert len(ids) == 1  # one notice, retried: the receiver can drop duplicates by id


def test_a_permanent_refusal_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    m = _metrics()
    notifier = Notifier(_config(receiver), m).start()
    try:
        notifier.notify([NOTICE])
        _wait_until(lambda: _count(m.notifications, "failed") == 1)
    finally:
        notifier.stop()
    assert len(receiver.got) == 1
    assert _count(m.attempts, "error") == 1


def test_an_untrusted_receiver_certificate_is_never_sent_to(
    receiver: Receiver, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(dt.datetime.now(dt.UTC))
    wrong = tmp_path / "other.crt"
    wrong.write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
    m = _metrics()
    config = WebhookConfig(url=receiver.url, key=KEY, ca_file=wrong, max_attempts=2,
                           backoff_base_seconds=0.01)  # fmt: skip
    notifier = Notifier(config, m).start()
    try:
        notifier.notify([NOTICE])
        _wait_until(lambda: _count(m.notifications, "failed") == 1)
    finally:
        notifier.stop()
    assert receiver.got == []
    assert _count(m.attempts, "retry") == 2


def test_a_full_queue_drops_without_blocking(receiver: Receiver) -> None:
    m = _metrics()
    notifier = Notifier(_config(receiver, queue_size=2), m)  # not started: nothing drains
    notifier.notify([NOTICE] * 5)
    assert _count(m.notifications, "dropped") == 3


def test_a_reconcile_notifies_each_trust_loss_and_restoration(
    receiver: Receiver, tmp_path: Path
) -> None:
    # The recorded status verified `hyperwall`; this catalog has only `tpm`: a loss and a gain.
    s = step("good")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(GOLDEN["caBundle"])
    io = FakeIO()
    v = Verifier(
        io,  # type: ignore[arg-type]
        BundleSource(bundle),
        clock=lambda: s.now,
        entropy=SeededEntropy(b"v"),
        notifier=lambda m: Notifier(
            _config(receiver), NotifyMetrics(m.notifications, m.notification_attempts)
        ),
    )
    assert v.notifier is not None
    v.notifier.start()
    try:
        v._on_profile("ADDED", _profile("tpm"))
        v._on_node("ADDED", {"metadata": {"name": "node-1", "uid": "n-1", "labels": {}}})
        obj = _obj("node-1", s)
        for verdict in obj["status"]["verdicts"]:
            if verdict["profile"] == "tpm":  # it was lost before: this evidence restores it
                verdict["result"] = "Rejected"
        io.objects["node-1"] = copy.deepcopy(obj)
        v._on_attestation("ADDED", obj)
        v.reconcile("node-1")
        got = receiver.wait_for(2)
    finally:
        v.notifier.stop()
    events = {json.loads(body)["type"]: json.loads(body) for _, body in got}
    assert events["dev.sod.trust.restored"]["data"]["profile"] == "tpm"
    assert events["dev.sod.trust.revoked"]["data"]["profile"] == "hyperwall"
    assert {e["subject"] for e in events.values()} == {"node-1"}


def test_the_command_line_builds_the_webhook_only_with_a_key(tmp_path: Path) -> None:
    from sod_operator.verifier.main import build_parser, webhook

    base = ["run", "--ek-ca-bundle", "x.pem"]
    assert webhook(build_parser().parse_args(base)) is None
    with pytest.raises(ValueError, match="--notify-secret-file"):
        webhook(build_parser().parse_args([*base, "--notify-url", "https://h/"]))
    key = tmp_path / "hmac-key"
    key.write_text("k3y\n")
    factory = webhook(
        build_parser().parse_args(
            [*base, "--notify-url", "https://h/", "--notify-secret-file", str(key)]
        )
    )
    assert factory is not None
    from sod_operator.verifier.metrics import Metrics

    notifier = factory(Metrics(dict))
    assert notifier.config.key == b"k3y"
    assert notifier.config.url == "https://h/"


def test_the_documented_receiver_snippet_accepts_a_real_notice_and_refuses_a_forged_one() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "ATTESTATION.md").read_text()
    (snippet,) = [
        block.split("```", 1)[0]
        for block in doc.split("```python\n")[1:]
        if "def verify_sod_notice" in block
    ]
    scope: dict[str, Any] = {}
    exec(compile(snippet, "docs/ATTESTATION.md", "exec"), scope)
    body = notify.encode(notify.cloudevent(NOTICE, "s", "id-9", T0))
    ts = int(time.time())
    headers = {"X-Sod-Timestamp": str(ts), "X-Sod-Signature": notify.sign(KEY, ts, body)}
    assert scope["verify_sod_notice"](KEY, headers, body)["id"] == "id-9"
    with pytest.raises(ValueError, match="bad signature"):
        scope["verify_sod_notice"](KEY, headers, body.replace(b"node-1", b"node-2"))
    stale = {**headers, "X-Sod-Timestamp": str(ts - 301)}
    with pytest.raises(ValueError, match="stale"):
        scope["verify_sod_notice"](KEY, stale, body)
