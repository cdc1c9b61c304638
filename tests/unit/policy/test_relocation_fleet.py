"""Planning all SecureVMs affected by one event at once, within KubeVirt's limits.

Covers: most sensitive first, per-node outbound (2) and per-cluster (5) limits counting
migrations already in flight, moving target defense held back by any security relocation and
bounded by its own budget. Not covered: the per-VM decision (test_relocation.py).
"""

from __future__ import annotations

from datetime import timedelta

from sod_operator.policy.fleet import InFlight, allocate, plan_batch
from sod_operator.policy.plan import CreateMigration, SlotKind, SlotRequest
from sod_operator.policy.settings import RelocationSettings

from tests.unit.policy.scenario import NS, T0, VM_A, VM_B, Scenario, actions

CFG = RelocationSettings()


def req(
    node: str, sensitivity: int, kind: SlotKind = SlotKind.SECURITY, age: int = 0
) -> SlotRequest:
    return SlotRequest(kind, node, sensitivity, T0 - timedelta(seconds=age))


def test_most_sensitive_first_within_the_per_node_limit():
    requests = [(("ns", f"vm{i}"), req("n1", sensitivity=i)) for i in range(6)]
    granted, denied = allocate(requests, InFlight(), CFG)
    assert granted == [("ns", "vm5"), ("ns", "vm4")]
    assert len(denied) == 4


def test_cluster_limit_counts_migrations_already_running():
    requests = [(("ns", f"vm{i}"), req(f"n{i}", 2)) for i in range(6)]
    granted, _ = allocate(requests, InFlight(total=3, by_node={"x": 3}), CFG)
    assert len(granted) == 2


def test_equal_sensitivity_goes_oldest_first():
    requests = [(("ns", "young"), req("n1", 2, age=1)), (("ns", "old"), req("n2", 2, age=50))]
    granted, _ = allocate(requests, InFlight(), RelocationSettings(max_migrations_per_cluster=1))
    assert granted == [("ns", "old")]


def test_moving_target_never_overlaps_security_relocations():
    mtd = (("ns", "mtd"), req("n9", 0, SlotKind.MOVING_TARGET))
    sec = (("ns", "sec"), req("n1", 2))
    granted, denied = allocate([mtd, sec], InFlight(), CFG)
    assert granted == [("ns", "sec")]
    assert denied == [("ns", "mtd")]
    assert allocate([mtd], InFlight(security=1, total=1), CFG)[0] == []
    assert allocate([mtd], InFlight(security_waiting=1), CFG)[0] == []
    assert allocate([mtd], InFlight(), CFG)[0] == [("ns", "mtd")]


def test_moving_target_budget_is_cluster_wide():
    moves = [(("ns", f"m{i}"), req(f"n{i}", 0, SlotKind.MOVING_TARGET)) for i in range(3)]
    granted, _ = allocate(moves, InFlight(), RelocationSettings(mtd_budget=1))
    assert len(granted) == 1
    assert (
        allocate(moves, InFlight(moving_target=1, total=1), RelocationSettings(mtd_budget=1))[0]
        == []
    )


def test_a_revoked_node_with_many_vms_gets_all_plans_at_once_and_two_migrations():
    s = Scenario().profiles("hyperwall", "nohype")
    s.node("hw-1", "hyperwall").node("hw-2", "hyperwall").node("hw-3", "hyperwall")
    for i in range(6):
        name = f"vm{i}"
        s.securevm(name, VM_B if i % 2 else VM_A, uid=f"uid-{i}").vm_for(name).vmi_for(name, "hw-1")
        s.apply_status(name, s.plan(name))
    s.node("hw-1")  # trust revoked
    keys = s.world.keys_on_node("hw-1")
    assert len(keys) == 6
    batch = plan_batch({k: s.world.observation(k) for k in keys}, InFlight(), CFG, s.now)
    assert len(batch.plans) == 6
    created = [k for k, p in batch.plans.items() if actions(p, CreateMigration)]
    # Per-node outbound limit 2; VM-B (4 cells) outranks VM-A (2 cells).
    assert len(created) == 2
    assert all(k[1] in {"vm1", "vm3", "vm5"} for k in created)
    assert sorted(batch.waiting) == sorted(set(keys) - set(created))
    assert all(k[0] == NS for k in batch.granted)
