"""Migration faults (issue 8, item 3): what breaks between the decision to move and the move.

A private bed (`tests.reliability.bed`: four HyperWall nodes and a plain one, real virt-api and
virt-controller, the virt-handler player at a fast time scale; KubeVirt fails a migration whose
target pod stays unschedulable after its fixed 300 s) and one
`sod-operator` per experiment, in its own namespace. Experiments:

* **injected failures**: 10 VMs evacuated while KubeVirt's own failure-injection annotation
  makes every first attempt fail; each retry must land on another node than the failed target;
* **a target that never schedules**: the only compliant target first is tainted `NoSchedule`
  (the operator knows the launcher pod does not tolerate it: no migration, NoCompliantNode),
  then instead lacks `kubevirt.io/schedulable=true` (KubeVirt's own node selector, which the
  operator does not model: the scheduler never places the target pod); KubeVirt fails the
  migration, the fail-closed `Alert` fires at its deadline, and the VM moves as soon as a
  usable node gains trust;
* **the target revoked mid-migration**: the migration is held in flight while its target loses
  trust; once it lands the VM is moved again, to the remaining compliant node, never with two
  migrations at once;
* **two nodes flapping** between verified and revoked (`FLAPS` = 10 flaps, a third node stays
  verified, the second node revoked once just before), with and without the node cooldown:
  migrations per flap, counted by a watch started before the flaps (KubeVirt keeps only five
  finished migrations per VMI); only a VM on the node that lost trust may move, once per flap;
  with the cooldown every VM moves once, straight to the stable node;
* **fail-closed deadlines**: `Alert` and `Stop` act no earlier than `deadlineSeconds` after the
  VM became non-compliant, `Stop` halts the VM, and it is started again on a compliant node once
  one exists.

Figures go to docs/RELIABILITY.md through `tests.reliability.figures`. Not covered: faults of
the control plane itself (test_reliability_controlplane.py).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.constants import profile_label
from sod_testbed.handler_player import (
    FORCE_MIGRATION_FAILURE_ANNOTATION,
    HOLD_MIGRATION_ANNOTATION,
    PlayerConfig,
)
from sod_testbed.kubeapi import JsonObj, KubeApi, resource_path
from sod_testbed.nodes import parse_nodes

from tests.e2e.harness import condition, vm_manifest, wait_for
from tests.e2e.operator_run import OperatorProcess, install_catalog, metric_value
from tests.reliability.bed import PrivateBed
from tests.reliability.figures import record
from tests.reliability.watch import MigrationWatch

RELIABILITY_ITEM = "3"
"""A failure of any test here is a failed row of this item in docs/RELIABILITY.md."""

SOD = "sod.dev/v1alpha1"
KV = "kubevirt.io/v1"
H1, H2, H3, H4 = (f"hyperwall-{i}" for i in range(1, 5))
ALL = (H1, H2, H3, H4)
REQUEST = {"options": ["Basic", "HypervisorProtection"]}
FLAPS = int(os.environ.get("SOD_FLAPS", "10"))
TAINT = {"key": "sod.dev/reliability-never-schedules", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBed]:
    bed = PrivateBed(
        tmp_path_factory.mktemp("migration-faults-bed"),
        parse_nodes("hyperwall=4,plain=1"),
        PlayerConfig(time_scale=0.02, resync_seconds=2.0),
    )
    try:
        bed.start()
        install_catalog(bed.cluster.api())
        yield bed
    finally:
        bed.stop()


class World:
    """One experiment: its namespace, its operator, and the bed's nodes' trust."""

    def __init__(self, bed: PrivateBed, ns: str, log: Path, *flags: str):
        self.api: KubeApi = bed.cluster.api()
        self.ns = ns
        self.api.create(
            resource_path("v1", "namespaces"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
        bed.cluster.wait_for_service_account(ns, timeout=30)
        self.operator = OperatorProcess(bed.cluster.kubeconfig, ns, log, *flags)

    def trust(self, *verified: str) -> None:
        """Exactly `verified` among the HyperWall nodes carry the profile."""
        for node in ALL:
            self.api.merge_patch(
                resource_path("v1", "nodes", name=node),
                {"metadata": {"labels": {
                    profile_label("hyperwall"): "verified" if node in verified else None}}},
            )  # fmt: skip

    def trust_seen(self, *verified: str) -> None:
        """`trust(*verified)`, then wait until the operator counts that many verified nodes
        (its gauge), so that no change is folded into the next one."""
        self.trust(*verified)
        wait_for(
            lambda: metric_value(
                self.operator.metrics(), "sod_verified_nodes", {"profile": "hyperwall"}
            ),
            lambda v: v == len(verified),
            f"the operator to see {len(verified)} hyperwall node(s) verified",
            30,
        )

    def create(self, name: str, **spec: Any) -> None:
        template = vm_manifest(name, memory="128Mi")["spec"]
        self.api.create(
            resource_path(SOD, "securevms", self.ns),
            {"apiVersion": SOD, "kind": "SecureVM", "metadata": {"name": name},
             "spec": {"security": REQUEST, "template": template, **spec}},
        )  # fmt: skip

    def svm(self, name: str) -> JsonObj:
        return self.api.get(resource_path(SOD, "securevms", self.ns, name))

    def ready_on(self, name: str, nodes: tuple[str, ...] | None = None, timeout: float = 60) -> str:
        obj = wait_for(
            lambda: self.svm(name),
            lambda o: (
                (condition(o, "Ready") or {}).get("status") == "True"
                # KubeVirt moves the VMI's nodeName one write before the migration completes:
                # Ready on the target can precede the relocation's end.
                and (condition(o, "Relocating") or {}).get("status") != "True"
                and (nodes is None or (o.get("status") or {}).get("nodeName") in nodes)
            ),
            f"{self.ns}/{name} Ready on {nodes or 'a compliant node'}",
            timeout,
        )
        return str(obj["status"]["nodeName"])

    def annotate_vmi(self, name: str, key: str, value: str | None) -> None:
        self.api.merge_patch(
            resource_path(KV, "virtualmachineinstances", self.ns, name),
            {"metadata": {"annotations": {key: value}}},
        )

    def migrations(self, vmi: str | None = None) -> list[JsonObj]:
        items = self.api.list(resource_path(KV, "virtualmachineinstancemigrations", self.ns))
        out = [m for m in items["items"] if vmi is None or m["spec"]["vmiName"] == vmi]
        return sorted(out, key=lambda m: m["metadata"]["creationTimestamp"])

    def taint(self, node: str, on: bool) -> None:
        self.api.merge_patch(
            resource_path("v1", "nodes", name=node), {"spec": {"taints": [TAINT] if on else None}}
        )

    def kubevirt_schedulable(self, node: str, on: bool) -> None:
        """virt-handler's `kubevirt.io/schedulable` label, which every launcher pod selects."""
        labels = {"kubevirt.io/schedulable": "true" if on else "false"}
        self.api.merge_patch(
            resource_path("v1", "nodes", name=node), {"metadata": {"labels": labels}}
        )

    def close(self) -> None:
        self.operator.stop()
        self.api.delete(resource_path("v1", "namespaces", name=self.ns))


@pytest.fixture
def world(bed: PrivateBed, tmp_path: Path) -> Iterator[Any]:
    worlds: list[World] = []

    def make(ns: str, *flags: str) -> World:
        w = World(bed, ns, tmp_path / f"{ns}.log", *flags)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        print(f"--- sod-operator log of {w.ns} (tail) ---\n{w.operator.log(4000)}")
        w.close()


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_injected_failures_are_retried_on_another_node(world: Any):
    # The retry must not start before this test has removed the failure annotation of that
    # VM (it walks ten VMs one after the other): a 30 s retry base leaves room for that on a
    # busy machine, where 2 s made a VM fail twice and the count read 3.
    w = world("faults-injected", "--retry-base-seconds", "30", "--retry-max-seconds", "60")
    w.trust(H1)
    w.operator.start()
    names = [f"vm-{i}" for i in range(10)]
    for n in names:
        w.create(n)
    for n in names:
        w.ready_on(n, (H1,))
        w.annotate_vmi(n, FORCE_MIGRATION_FAILURE_ANNOTATION, "true")
    w.trust(H2, H3, H4)
    first: dict[str, str] = {}
    for n in names:
        failed = wait_for(
            lambda n=n: w.svm(n),
            lambda o: (condition(o, "RelocationFailed") or {}).get("status") == "True",
            f"{n}: the first attempt failed",
            60,
        )
        first[n] = failed["status"]["relocation"]["toNode"]
        w.annotate_vmi(n, FORCE_MIGRATION_FAILURE_ANNOTATION, None)
    final = {n: w.ready_on(n, (H2, H3, H4), timeout=150) for n in names}
    elsewhere = [n for n in names if final[n] != first[n]]
    per_vm = {n: len(w.migrations(n)) for n in names}
    record(
        "3",
        "injected migration failures (KubeVirt's failure annotation), 10 VMs evacuated",
        len(names),
        f"{len(elsewhere)}/{len(names)} retries landed on another node than the failed target",
        migrations_per_vm=sorted(set(per_vm.values())),
        first_targets=sorted(set(first.values())),
    )
    assert elsewhere == names, {n: (first[n], final[n]) for n in names}
    assert set(per_vm.values()) == {2}, per_vm


def test_a_target_that_never_schedules(world: Any):
    w = world("faults-unschedulable")
    w.trust(H1)
    w.operator.start()
    w.create("stuck", relocation={"failClosed": {"action": "Alert", "deadlineSeconds": 3}})
    w.ready_on("stuck", (H1,))
    w.taint(H2, True)
    try:
        w.trust(H2)  # H1 revoked; the only compliant node does not take this VM's pods
        wait_for(
            lambda: w.svm("stuck"),
            lambda o: (condition(o, "Relocating") or {}).get("reason") == "NoCompliantNode",
            "NoCompliantNode: the only compliant node's taint is not tolerated",
        )
        time.sleep(2)  # more events must not create a migration either
        tainted_migrations = len(w.migrations("stuck"))
        assert tainted_migrations == 0, (
            "a migration to a node whose taint the pod does not tolerate"
        )
        w.kubevirt_schedulable(H2, False)
        w.taint(H2, False)
        alerted = wait_for(
            lambda: w.svm("stuck"),
            lambda o: (condition(o, "Ready") or {}).get("reason") == "FailClosedDeadlineExceeded",
            "the fail-closed Alert while no usable node exists",
            60,
        )
        doomed = wait_for(
            lambda: w.migrations("stuck"),
            lambda ms: any((m.get("status") or {}).get("phase") == "Failed" for m in ms),
            "KubeVirt to fail the migration whose target never schedules",
            # virt-controller's unschedulable-target timeout is 300 s (per VMIM annotation
            # only; the operator sets none).
            400,
        )
        w.trust(H2, H3)
        t_node = dt.datetime.now(dt.UTC)
        node = w.ready_on("stuck", (H3,))
        done = w.svm("stuck")
    finally:
        w.taint(H2, False)
        w.kubevirt_schedulable(H2, True)
    vmims = w.migrations("stuck")
    failed = [m for m in vmims if m["status"].get("phase") == "Failed"]
    record(
        "3",
        "a target that never schedules (only compliant node tainted NoSchedule, then without "
        "kubevirt.io/schedulable)",
        1,
        "tainted: NoCompliantNode, no migration; without KubeVirt's label (not modelled): "
        f"{len(failed)} doomed migration(s) failed by KubeVirt; fail-closed Alert fired; "
        f"moved to {node} once it gained trust",
        migrations_while_tainted=tainted_migrations,
        migrations=[(m["metadata"]["name"], m["status"].get("phase")) for m in vmims],
        alert_message=condition(alerted, "Ready")["message"],
        seconds_node_verified_to_compliant=round(
            (_ts(condition(done, "Ready")["lastTransitionTime"]) - t_node).total_seconds(), 1
        ),
    )
    assert doomed
    assert vmims[-1]["status"]["phase"] == "Succeeded"


def test_the_target_revoked_mid_migration(world: Any):
    w = world("faults-target-revoked")
    w.trust(H1)
    w.operator.start()
    w.create("vm")
    w.ready_on("vm", (H1,))
    w.annotate_vmi("vm", HOLD_MIGRATION_ANNOTATION, "true")
    w.trust(H2)  # the only target
    (mig,) = wait_for(lambda: w.migrations("vm"), bool, "the first migration", 30)
    wait_for(
        lambda: w.migrations("vm")[0],
        lambda m: (m.get("status") or {}).get("phase") == "Running",
        "the migration to run",
        30,
    )
    w.trust(H3)  # the target H2 loses trust mid-migration; H3 gains it
    held = w.migrations("vm")
    w.annotate_vmi("vm", HOLD_MIGRATION_ANNOTATION, None)
    node = w.ready_on("vm", (H3,))
    vmims = w.migrations("vm")
    history = w.svm("vm")["status"]["history"]
    record(
        "3",
        "the target node revoked mid-migration",
        1,
        f"migration finished on the revoked target, then moved on to {node}; "
        f"{len(held)} migration in flight while held, {len(vmims)} in all, one at a time",
        history=[(h["fromNode"], h["toNode"], h["result"]) for h in history],
    )
    assert len(held) == 1, "a second migration was created while the first was in flight"
    assert [(h["fromNode"], h["toNode"], h["result"]) for h in history] == [
        (H1, H2, "Succeeded"),
        (H2, H3, "Succeeded"),
    ]
    assert mig["metadata"]["name"] == history[0]["migrationName"]


@pytest.mark.slow
@pytest.mark.parametrize("cooldown", [0, 60])
def test_two_nodes_flapping(world: Any, bed: PrivateBed, cooldown: int):
    w = world(f"faults-flapping-{cooldown}", "--node-cooldown-seconds", str(cooldown))
    w.trust(H1)  # all start on H1; H3 then stays verified throughout
    w.operator.start()
    names = [f"vm-{i}" for i in range(4)]
    for n in names:
        w.create(n)
    for n in names:
        w.ready_on(n, (H1,))
    # H2 flaps once before the count starts: verified, then revoked as H3 is verified. With
    # the cooldown the operator steers the first flap's moves past H2 to the stable H3;
    # without it the scheduler may put VMs on H2, and the next flap moves them again.
    w.trust_seen(H1, H2)
    w.trust_seen(H1)
    w.trust_seen(H1, H3)
    # Counted from a watch started before the first flap: KubeVirt keeps only the newest five
    # finished migrations per VMI, so a list at the end could never show more.
    watch = MigrationWatch(bed.cluster.kubeconfig, w.ns).start()
    must_move: list[int] = []
    try:
        for i in range(FLAPS):
            # H1 and H2 swap trust; H3 stays verified throughout.
            settle, revoked = ((H2, H3), H1) if i % 2 == 0 else ((H1, H3), H2)
            must_move.append(sum(1 for n in names if w.svm(n)["status"]["nodeName"] == revoked))
            w.trust(*settle)
            for n in names:
                w.ready_on(n, settle, timeout=90)
        # Every migration the VMs' moves needed has reached the watch; any extra one too
        # (a retry, a move of a VM that did not have to move) is counted.
        wait_for(watch.count, lambda c: c >= sum(must_move), "the watch saw every move", 30)
        total, per_vm = watch.count(), watch.per_vmi()
    finally:
        watch.stop()
    on_stable = [n for n in names if w.svm(n)["status"]["nodeName"] == H3]
    record(
        "3",
        f"two nodes flapping verified/revoked, node cooldown {cooldown} s",
        FLAPS,
        f"{total} migrations (counted by a watch) for {len(names)} VMs over {FLAPS} flaps "
        f"({total / FLAPS:.2f} per flap), {sum(must_move)} VMs on the revoked node at a flap; "
        f"{len(on_stable)}/{len(names)} end on the stable node",
        cooldown_seconds=cooldown,
        migrations_per_flap=round(total / FLAPS, 2),
        migrations_per_vm=per_vm,
        vms_on_the_revoked_node_per_flap=must_move,
    )
    # Only a VM on the node that lost trust moves, once per flap; nothing else migrates.
    assert total == sum(must_move), (total, must_move, per_vm)
    if cooldown:
        # Moves avoid a node that lost trust within the cooldown: each VM moves once, straight
        # to the stable node, and nothing goes back to a flapping node.
        assert on_stable == names, {n: w.svm(n)["status"]["nodeName"] for n in names}
        assert total == len(names), per_vm


@pytest.mark.parametrize("action", ["Alert", "Stop"])
def test_fail_closed_acts_at_its_deadline(world: Any, action: str):
    deadline = 4
    w = world(f"faults-fail-closed-{action.lower()}")
    w.trust(H1)
    w.operator.start()
    w.create("vm", relocation={"failClosed": {"action": action, "deadlineSeconds": deadline}})
    w.ready_on("vm", (H1,))
    # Ready stays False from the revocation on (only its reason changes), so the moment of the
    # action is observed here, on the local clock, from the revocation's write.
    t_revoked = time.monotonic()
    w.trust()  # no compliant node anywhere
    reason = "FailClosedDeadlineExceeded" if action == "Alert" else "FailClosedStopped"
    wait_for(
        lambda: w.svm("vm"),
        lambda o: (condition(o, "Ready") or {}).get("reason") == reason,
        f"fail-closed {action}",
        60,
    )
    acted_after = time.monotonic() - t_revoked
    vm_path = resource_path(KV, "virtualmachines", w.ns, "vm")
    figures: dict[str, Any] = {"deadline_s": deadline, "acted_after_s": round(acted_after, 1)}
    if action == "Stop":
        wait_for(
            lambda: w.api.get(vm_path),
            lambda vm: vm["spec"]["runStrategy"] == "Halted",
            "the VM halted",
            30,
        )
        wait_for(
            lambda: w.api.get_or_none(resource_path(KV, "virtualmachineinstances", w.ns, "vm")),
            lambda vmi: vmi is None,
            "the VMI gone",
            30,
        )
        w.trust(H2)
        figures["restarted_on"] = w.ready_on("vm", (H2,))
        assert w.api.get(vm_path)["spec"]["runStrategy"] == "Always"
        outcome = f"VM halted, started again on {figures['restarted_on']} once it was compliant"
    else:
        assert w.api.get(vm_path)["spec"]["runStrategy"] == "Always"
        assert w.api.get_or_none(resource_path(KV, "virtualmachineinstances", w.ns, "vm"))
        outcome = "VM kept running, reported"
    record(
        "3",
        f"fail-closed {action}, deadline {deadline} s, no compliant node",
        1,
        f"{reason} {figures['acted_after_s']} s after the revocation; {outcome}",
        **figures,
    )
    # Not earlier than the deadline (a lower bound: slowness cannot make this fail).
    assert acted_after >= deadline, figures
