"""bench.fanout's pure parts: migration rounds from VMIM updates, the descheduler baseline's
incident spans from observed objects (no cluster, no clock)."""

from __future__ import annotations

from typing import Any

from bench import fanout

NS = fanout.BASELINE_NS


def _vmim(name: str, vmi: str, phase: str | None = None, ns: str = NS) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": ns, "uid": f"u-{name}"},
                           "spec": {"vmiName": vmi}}  # fmt: skip
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def _vmi(name: str, node: str, target: str = "", completed: bool = False) -> dict[str, Any]:
    state = {"targetNode": target, "completed": completed} if target else {}
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {},
        "status": {"phase": "Running", "nodeName": node, "migrationState": state},
    }


def _updates(*items: tuple[float, dict[str, Any]]) -> list[fanout.Update]:
    return [(t, (o["metadata"]["namespace"], o["metadata"]["name"]), o) for t, o in items]


def test_rounds_count_peak_in_flight_and_refill_after_a_slot_frees():
    history = _updates(
        (0.0, _vmim("m1", "a", "Scheduling")),
        (0.1, _vmim("m2", "b", "Running")),
        (0.2, _vmim("m4", "d", "Pending")),  # queued by virt-controller: not in flight
        (1.0, _vmim("m1", "a", "Succeeded")),
        (1.25, _vmim("m3", "c")),
        (1.3, _vmim("m2", "b", "Failed")),
        (2.0, _vmim("m3", "c", "Running")),
    )
    peak, migrations, refill = fanout.migration_rounds(history)
    assert (peak, migrations) == (2, 4)
    assert refill == [250.0]  # only m3 was created after a slot freed


def test_rounds_of_no_migration_are_empty():
    assert fanout.migration_rounds([]) == (0, 0, [])


def test_baseline_spans_end_at_the_last_vms_migration_and_arrival():
    events = [
        (9.0, "vmim", _vmim("old", "vm-0")),  # before the revocation: not counted
        (11.0, "vmim", _vmim("m0", "vm-0", "Running")),
        (12.0, "vmim", _vmim("m1", "vm-1", "Scheduling")),
        (12.5, "vmi", _vmi("vm-0", "src", "t1", completed=True)),  # not yet handed over
        (13.0, "vmi", _vmi("vm-0", "t1", "t1", completed=True)),
        (13.5, "vmim", _vmim("m0", "vm-0", "Succeeded")),
        (14.0, "vmim", _vmim("x", "vm-1", ns="other")),  # another namespace
        (15.0, "vmi", _vmi("vm-1", "t2", "t2", completed=True)),
    ]
    out = fanout.baseline_spans(events, NS, ["vm-0", "vm-1"], "src", 10.0)
    assert out["created_s"] == 2.0
    assert out["done_s"] == 5.0
    assert (out["peak_in_flight"], out["migrations"]) == (2, 2)


def test_baseline_span_is_absent_when_a_vm_never_moved():
    events = [(11.0, "vmim", _vmim("m0", "vm-0")), (12.0, "vmi", _vmi("vm-0", "t1", "t1", True))]
    out = fanout.baseline_spans(events, NS, ["vm-0", "vm-1"], "src", 10.0)
    assert out["created_s"] is None
    assert out["done_s"] is None
