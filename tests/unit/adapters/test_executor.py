"""The executor alone: a plan in, API calls out, in the plan's order, deciding nothing.

Covers: status first, then the actions, then Events; no status write when the plan says it is
unchanged; a SecureVM gone (404 on its status) stops the plan; 409 AlreadyExists on a
migration is success; the reaction metric counts first attempts of security relocations only;
a VM refused by the apiserver (422) is reported as `VMRejected`; every action type of the
`Action` union is handled; what the apiserver answers goes to the write-through.
Not covered: batching, slots and retries (test_controller.py, test_queue.py).
"""

from __future__ import annotations

import asyncio
import typing
from typing import Any

import pytest
from sod_operator.adapters.executor import Executor, MigrationRefused, Outcome, VMRejected
from sod_operator.adapters.metrics import Metrics
from sod_operator.api.v1alpha1.securevm import RelocationTrigger, SecureVMStatus
from sod_operator.kube import ApiError, EventRecorder
from sod_operator.policy.observed import Kind
from sod_operator.policy.plan import (
    Action,
    CreateMigration,
    CreateVM,
    Event,
    EventType,
    PatchVM,
    Plan,
    ReplaceVMSpec,
    RestartVMI,
)

from tests.unit.adapters.test_controller import NS, FakeKube

Json = dict[str, Any]


class Recorder:
    def __init__(self) -> None:
        self.objects: list[tuple[Kind, str]] = []
        self.statuses: list[tuple[str, str]] = []

    def written(self, kind: Kind, body: Json) -> None:
        self.objects.append((kind, body["metadata"]["name"]))

    def status_written(self, plan: Plan, body: Json) -> None:
        self.statuses.append(plan.key)


def migration(name: str, trigger: RelocationTrigger, attempt: int = 1) -> CreateMigration:
    body = {"metadata": {"name": name}, "spec": {"vmiName": "vm"}}
    return CreateMigration(name, "vm", trigger, "hw-1", attempt, body)


def vm_body(name: str = "vm") -> Json:
    return {"metadata": {"name": name}, "spec": {}}


ALL_ACTIONS: list[Action] = [
    CreateVM(vm_body()),
    PatchVM("vm", {"spec": {}}),
    ReplaceVMSpec("vm", {"runStrategy": "Always"}, {"a": "b"}),
    migration("svm-vm-1", RelocationTrigger.TRUST_REVOKED),
    RestartVMI("vm", "uid-vmi"),
]


def plan(*actions: Action, write_status: bool = True) -> Plan:
    p = Plan((NS, "vm"), SecureVMStatus(), uid="uid-svm", write_status=write_status)
    p.actions = list(actions)
    p.events = [Event(EventType.NORMAL, "Something", "happened")]
    return p


def run(kube: FakeKube, p: Plan, since: float | None = 0.0) -> tuple[Outcome, Recorder, Metrics]:
    async def go() -> tuple[Outcome, Recorder, Metrics]:
        rec, metrics = Recorder(), Metrics()
        ex = Executor(kube, EventRecorder(kube, "test"), metrics, rec)  # type: ignore[arg-type]
        out = await ex.run(p, since, lambda: False)
        await ex.events.drain()
        return out, rec, metrics

    return asyncio.run(go())


def test_every_action_type_is_executed_after_the_status():
    assert {type(a) for a in ALL_ACTIONS} == set(typing.get_args(Action))
    kube = FakeKube()
    outcome, rec, _ = run(kube, plan(*ALL_ACTIONS))
    assert outcome is Outcome.MIGRATION_CREATED
    assert kube.calls == [
        ("status", "securevms", "vm"),
        ("create", "virtualmachines", "vm"),
        ("patch", "virtualmachines", "vm"),
        ("json-patch", "virtualmachines", "vm"),
        ("patch", "virtualmachines", "vm"),
        ("create", "virtualmachineinstancemigrations", "svm-vm-1"),
        ("delete", "virtualmachineinstances", "vm"),
    ]
    assert rec.statuses == [(NS, "vm")]
    assert [k for k, _ in rec.objects] == [Kind.VM, Kind.VM, Kind.VM, Kind.MIGRATION]


def test_an_unchanged_status_is_not_written():
    kube = FakeKube()
    outcome, _, _ = run(kube, plan(write_status=False))
    assert outcome is Outcome.DONE
    assert kube.calls == []


def test_a_securevm_gone_stops_the_plan():
    class Gone(FakeKube):
        async def replace_status(self, namespace: str, name: str, status: Json) -> Json:
            raise ApiError("PUT", "securevms", 404, b'{"reason": "NotFound"}')

    kube = Gone()
    outcome, _, _ = run(kube, plan(migration("m", RelocationTrigger.TRUST_REVOKED)))
    assert outcome is Outcome.GONE
    assert kube.calls == []


def test_an_existing_migration_is_success_and_not_a_reaction():
    kube = FakeKube()
    kube.exists.add("svm-vm-1")
    outcome, rec, metrics = run(kube, plan(migration("svm-vm-1", RelocationTrigger.TRUST_REVOKED)))
    assert outcome is Outcome.DONE
    assert rec.objects == []
    assert metrics.reaction._metrics == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("trigger", "attempt", "counted"),
    [
        (RelocationTrigger.TRUST_REVOKED, 1, True),
        (RelocationTrigger.TRUST_REVOKED, 2, False),
        (RelocationTrigger.MOVING_TARGET_DEFENSE, 1, False),
    ],
)
def test_reaction_counts_first_attempts_of_security_relocations(
    trigger: RelocationTrigger, attempt: int, counted: bool
):
    _, _, metrics = run(FakeKube(), plan(migration("m", trigger, attempt)))
    labels = set(metrics.reaction._metrics)  # type: ignore[attr-defined]
    assert labels == ({(str(trigger),)} if counted else set())


def test_a_vm_the_apiserver_refuses_is_reported():
    class Refusing(FakeKube):
        async def create(self, api_version: str, plural: str, namespace: str, body: Json) -> Json:
            raise ApiError("POST", plural, 422, b'{"reason": "Invalid", "message": "bad spec"}')

    with pytest.raises(VMRejected, match="bad spec"):
        run(Refusing(), plan(CreateVM(vm_body())))


def test_a_migration_virt_api_refuses_at_admission_is_reported_with_its_name():
    message = (
        'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
        "Cannot migrate VMI, Reason: SEVNotLiveMigratable"
    )

    class Refusing(FakeKube):
        async def create(self, api_version: str, plural: str, namespace: str, body: Json) -> Json:
            raise ApiError("POST", plural, 422, {"reason": "Invalid", "message": message})

    with pytest.raises(MigrationRefused, match="SEVNotLiveMigratable") as err:
        run(Refusing(), plan(migration("m", RelocationTrigger.TRUST_REVOKED)))
    assert err.value.name == "m"
