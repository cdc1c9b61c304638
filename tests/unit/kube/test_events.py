"""The Event recorder: one body for the operator's and the verifier's Events, blocking or
fire-and-forget, bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sod_operator.kube import EventRecorder, Involved
from sod_operator.kube.events import Source, event_body

NOW = datetime(2026, 12, 6, 22, 0, 5, 123456, tzinfo=UTC)


class RecordingClient:
    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.created.append((path, obj))
        return obj


def test_an_event_about_a_namespaced_object_goes_to_its_namespace() -> None:
    about = Involved("sod.dev/v1alpha1", "SecureVM", "vm-1", "u-1", "tenant")
    body = event_body(
        about, "Normal", "Placed", "x" * 2000, NOW, Source("sod-operator", "sod-operator", "pod-1")
    )
    assert body["metadata"] == {"generateName": "vm-1.", "namespace": "tenant"}
    assert body["involvedObject"] == {
        "apiVersion": "sod.dev/v1alpha1", "kind": "SecureVM", "name": "vm-1", "uid": "u-1",
        "namespace": "tenant",
    }  # fmt: skip
    assert len(body["message"]) == 1024
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-06T22:00:05Z"
    assert (body["count"], body["reportingInstance"], body["source"]) == (
        1, "pod-1", {"component": "sod-operator"},
    )  # fmt: skip


def test_the_verifier_records_events_about_cluster_scoped_objects_in_default() -> None:
    client = RecordingClient()
    recorder = EventRecorder(
        client,
        "host-1",
        component="sod-verifier",
        reporting_component="sod.dev/verifier",  # type: ignore[arg-type]
    )
    recorder.record(Involved("v1", "Node", "n1", "u-n1"), "Warning", "ProfileRevoked", "m", NOW)
    path, body = client.created[0]
    assert path == "/api/v1/namespaces/default/events"
    assert "namespace" not in body["involvedObject"]
    assert (body["source"]["component"], body["reportingComponent"]) == (
        "sod-verifier", "sod.dev/verifier",
    )  # fmt: skip


def test_post_is_fire_and_forget_and_drops_beyond_its_backlog() -> None:
    client = RecordingClient()
    recorder = EventRecorder(client, "op", backlog=2)  # type: ignore[arg-type]

    async def go() -> None:
        for i in range(3):
            recorder.post("tenant", f"vm-{i}", "u", "Normal", "Placed", "m")
        await recorder.drain()

    asyncio.run(go())
    assert recorder.dropped == 1
    assert sorted(b["involvedObject"]["name"] for _, b in client.created) == ["vm-0", "vm-1"]
