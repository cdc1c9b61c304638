"""The controller runtime against an in-memory API double (no apiserver).

Covers: nothing is planned before kopf says every kind is listed; a relocation's status is
written before its migration is created; 409 AlreadyExists on create is success; a watch
event older than our own write never rolls the world back; a node holding six VMs yields two
migrations (per-node limit) even when a second batch is planned while the first creates are
still in flight; leadership loss stops all writes; planning waits for the verifier's renewals
too, and a node's verdict expiries follow its renewal. Not covered: kopf itself, real HTTP
(tests/e2e).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import yaml
from sod_operator.adapters.controller import Controller, Kind
from sod_operator.adapters.metrics import Metrics
from sod_operator.api.constants import VERIFIED, profile_label
from sod_operator.api.v1alpha1.nodeattestation import Renewal, RenewalList
from sod_operator.kube import ApiError, EventRecorder
from sod_operator.policy.settings import RelocationSettings

from tests.unit.policy.scenario import ROOT, T0, TEMPLATE

NS = "tenant"
Json = dict[str, Any]


class FakeKube:
    """Records every write; answers like the apiserver (the object, with a new resourceVersion)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.rv = itertools.count(1000)
        self.objects: dict[tuple[str, str], Json] = {}
        self.create_delay = 0.0
        self.exists: set[str] = set()

    def _stamp(self, body: Json) -> Json:
        out = dict(body)
        out["metadata"] = {**body.get("metadata", {}), "resourceVersion": str(next(self.rv))}
        return out

    async def replace_status(self, namespace: str, name: str, status: Json) -> Json:
        self.calls.append(("status", "securevms", name))
        obj = self.objects.get(
            ("securevms", name), {"metadata": {"name": name, "namespace": namespace}}
        )
        obj = self._stamp({**obj, "status": status})
        self.objects[("securevms", name)] = obj
        return obj

    async def create(self, api_version: str, plural: str, namespace: str, body: Json) -> Json:
        name = body["metadata"].get("name", "")
        if plural == "events":
            return body
        self.calls.append(("create", plural, name))
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        if name in self.exists:
            raise ApiError("POST", plural, 409, b'{"reason": "AlreadyExists", "message": "exists"}')
        obj = self._stamp({**body, "metadata": {**body["metadata"], "namespace": namespace}})
        self.objects[(plural, name)] = obj
        return obj

    async def merge_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Json,
        sub: str | None = None,
    ) -> Json:
        self.calls.append(("patch", plural, name))
        obj = self.objects.get((plural, name), {"metadata": {"name": name, "namespace": namespace}})
        return self._stamp(obj)

    async def json_patch(self, *args: Any, **kw: Any) -> Json:
        self.calls.append(("json-patch", args[1], args[3]))
        return {}

    async def delete(
        self, api_version: str, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> None:
        self.calls.append(("delete", plural, name))

    def writes(self, kind: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] == kind]


def profile(name: str) -> Json:
    return yaml.safe_load((ROOT / "examples" / "profiles" / f"{name}.yaml").read_text())


def node(name: str, *profiles: str, rv: int = 1) -> Json:
    labels = {profile_label(p): VERIFIED for p in profiles}
    labels["kubernetes.io/hostname"] = name
    return {"metadata": {"name": name, "labels": labels, "resourceVersion": str(rv)}, "spec": {}}


def securevm(name: str, uid: str, rv: int = 1, status: Json | None = None) -> Json:
    return {
        "apiVersion": "sod.dev/v1alpha1",
        "kind": "SecureVM",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "generation": 1,
            "resourceVersion": str(rv),
        },
        "spec": {"security": {"options": ["Basic", "HypervisorProtection"]}, "template": TEMPLATE},
        **({"status": status} if status else {}),
    }


def vmi(name: str, node_name: str, rv: int = 1, affinity: Json | None = None) -> Json:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"vmi-{name}",
            "resourceVersion": str(rv),
            "labels": {"kubevirt.io/nodeName": node_name},
        },
        "spec": {"affinity": affinity or {}},
        "status": {"phase": "Running", "nodeName": node_name},
    }


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def controller(kube: FakeKube) -> Iterator[Controller]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = Controller(kube, RelocationSettings(), Metrics(), EventRecorder(kube, "test"))  # type: ignore[arg-type]
    yield c
    loop.close()


async def settle(c: Controller, rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.01)


def deploy(c: Controller, kube: FakeKube, count: int) -> None:
    """Profiles, three HyperWall nodes, `count` SecureVMs whose VMs run on hw-1."""
    for p in ("hyperwall", "nohype"):
        c.observe(Kind.PROFILE, profile(p))
    for n in ("hw-1", "hw-2", "hw-3"):
        c.observe(Kind.NODE, node(n, "hyperwall"))
    for i in range(count):
        c.observe(Kind.SECUREVM, securevm(f"vm{i}", f"uid-{i}"))


def converge(c: Controller, kube: FakeKube, count: int) -> None:
    """The VMs exist with the affinity the operator created them with, running on hw-1."""
    for i in range(count):
        created = kube.objects[("virtualmachines", f"vm{i}")]
        c.observe(
            Kind.VM,
            {
                **created,
                "metadata": {
                    **created["metadata"],
                    "uid": f"vm-{i}",
                    "ownerReferences": [{"uid": f"uid-{i}"}],
                },
            },
        )
        affinity = created["spec"]["template"]["spec"]["affinity"]
        c.observe(Kind.VMI, vmi(f"vm{i}", "hw-1", affinity=affinity))
        c.observe(Kind.POD, launcher(f"vm{i}", "hw-1"))


def launcher(name: str, node_name: str) -> Json:
    labels = {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": f"vmi-{name}"}
    return {
        "metadata": {"name": f"virt-launcher-{name}", "namespace": NS, "labels": labels},
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running"},
    }


def test_nothing_is_planned_before_every_kind_is_listed(controller: Controller, kube: FakeKube):
    async def go() -> None:
        task = asyncio.get_running_loop().create_task(controller.run())
        deploy(controller, kube, 1)
        await settle(controller)
        assert kube.calls == []
        controller.set_ready()
        await settle(controller)
        assert ("create", "virtualmachines", "vm0") in kube.calls
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())


def test_status_is_written_before_the_migration_and_409_is_success(
    controller: Controller, kube: FakeKube
):
    async def go() -> None:
        task = asyncio.get_running_loop().create_task(controller.run())
        deploy(controller, kube, 1)
        controller.set_ready()
        await settle(controller)
        converge(controller, kube, 1)
        await settle(controller)
        kube.calls.clear()
        controller.observe(Kind.NODE, node("hw-1", rv=2))  # trust revoked
        await settle(controller)
        order = [c for c in kube.calls if c[0] in ("status", "create")]
        assert order[0] == ("status", "securevms", "vm0")
        assert order[1][:2] == ("create", "virtualmachineinstancemigrations")
        # A restart re-creating the recorded name gets 409: no error, nothing retried.
        name = order[1][2]
        kube.exists.add(name)
        kube.objects.pop(("virtualmachineinstancemigrations", name))
        controller.world.apply_migration((NS, name), None)
        controller.mark([(NS, "vm0")])
        await settle(controller)
        assert controller.metrics.api_errors._metrics == {}  # type: ignore[attr-defined]
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())


def test_an_event_older_than_our_write_never_rolls_the_world_back(
    controller: Controller, kube: FakeKube
):
    async def go() -> None:
        task = asyncio.get_running_loop().create_task(controller.run())
        deploy(controller, kube, 1)
        controller.set_ready()
        await settle(controller)
        written = controller.world.svms[(NS, "vm0")].status
        assert written.conditions  # our status is in the world
        controller.observe(Kind.SECUREVM, securevm("vm0", "uid-0", rv=2))  # stale: no status
        assert controller.world.svms[(NS, "vm0")].status == written
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())


def test_per_node_limit_holds_across_batches_while_creates_are_in_flight(
    controller: Controller, kube: FakeKube
):
    async def go() -> None:
        task = asyncio.get_running_loop().create_task(controller.run())
        deploy(controller, kube, 6)
        controller.set_ready()
        await settle(controller)
        converge(controller, kube, 6)
        await settle(controller)
        kube.calls.clear()
        kube.create_delay = 0.2  # the first creates are still pending when more events arrive
        controller.observe(Kind.NODE, node("hw-1", rv=2))
        await asyncio.sleep(0.05)
        controller.mark([(NS, f"vm{i}") for i in range(6)])
        await asyncio.sleep(0.6)
        creates = [c for c in kube.calls if c[:2] == ("create", "virtualmachineinstancemigrations")]
        assert len(creates) == 2
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())


def test_lost_leadership_stops_all_writes(kube: FakeKube):
    import threading

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    lost = threading.Event()
    c = Controller(kube, RelocationSettings(), Metrics(), EventRecorder(kube, "t"), stopped=lost)  # type: ignore[arg-type]

    async def go() -> None:
        task = asyncio.get_running_loop().create_task(c.run())
        lost.set()
        deploy(c, kube, 2)
        c.set_ready()
        await settle(c)
        assert kube.calls == []
        task.cancel()

    loop.run_until_complete(go())
    loop.close()


def test_the_periodic_recheck_corrects_a_missed_event_and_counts_it(kube: FakeKube):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics = Metrics()
    c = Controller(kube, RelocationSettings(resync_seconds=0.1), metrics, EventRecorder(kube, "t"))  # type: ignore[arg-type]

    def corrections(what: str) -> float:
        value = metrics.registry.get_sample_value("sod_resync_corrections_total", {"what": what})
        return value or 0.0

    async def go() -> None:
        task = asyncio.get_running_loop().create_task(c.run())
        deploy(c, kube, 1)
        c.set_ready()
        await settle(c)
        converge(c, kube, 1)
        await asyncio.sleep(0.3)  # a few passes over a converged world correct nothing
        assert corrections("actions") == corrections("claim") == 0
        kube.calls.clear()
        # A revocation the watch never delivered: folded into the world, nobody marked.
        c.world.apply_node("hw-1", node("hw-1")["metadata"]["labels"], True, c.clock())
        await asyncio.sleep(0.3)
        assert corrections("actions") >= 1
        assert ("status", "securevms", "vm0") in kube.calls
        task.cancel()

    loop.run_until_complete(go())
    loop.close()


# --- verdict expiries and the verifier's fleet renewals (issue 17 item 3) ---------------------

NOW = T0 + timedelta(seconds=60)
DIGEST = "a" * 64


def attestation(name: str, rv: int = 1, digest: str = DIGEST) -> Json:
    """hw-*'s NodeAttestation: hyperwall verified from evidence of T0 - 110 s until T0 + 10 s
    (already past at NOW unless renewed)."""
    verdict = {
        "profile": "hyperwall",
        "result": "Verified",
        "evidenceTime": (T0 - timedelta(seconds=110)).isoformat(),
        "expiryTime": (T0 + timedelta(seconds=10)).isoformat(),
    }
    return {
        "metadata": {"name": name, "resourceVersion": str(rv)},
        "status": {"evidence": {"contentSha256": digest}, "verdicts": [verdict]},
    }


def renewals(*nodes: str, digest: str = DIGEST) -> RenewalList:
    """Each of `nodes` renewed by evidence of T0: its verdicts now expire at T0 + 120 s."""
    return RenewalList(
        renewals={n: Renewal(evidence_time=T0, content_sha256=digest) for n in nodes}
    )


@pytest.fixture
def renewed(kube: FakeKube) -> Iterator[Controller]:
    """A controller that waits for the renewals too, its clock at NOW."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = Controller(
        kube, RelocationSettings(), Metrics(), EventRecorder(kube, "t"),  # type: ignore[arg-type]
        clock=lambda: NOW, await_renewals=True,
    )  # fmt: skip
    yield c
    loop.close()


def _running_with_three_attested_nodes(c: Controller, kube: FakeKube) -> asyncio.Task[None]:
    """The controller's loop started, one SecureVM deployed, hw-1..3's verdicts observed."""
    task = asyncio.get_running_loop().create_task(c.run())
    deploy(c, kube, 1)
    for n in ("hw-1", "hw-2", "hw-3"):
        c.observe(Kind.ATTESTATION, attestation(n))
    return task


def test_planning_waits_for_the_renewals_as_for_kopfs_listing(renewed: Controller, kube: FakeKube):
    async def go() -> None:
        task = _running_with_three_attested_nodes(renewed, kube)
        renewed.set_ready()
        await settle(renewed)
        # Every status expiry has passed: planning now would find no node for the VM.
        assert kube.calls == []
        renewed.observe_renewals(renewals("hw-1", "hw-2", "hw-3"))
        await settle(renewed)
        assert ("create", "virtualmachines", "vm0") in kube.calls
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())


def test_a_node_s_expiries_are_its_verdicts_moved_by_its_renewal(renewed: Controller):
    expiry = renewed.world.expiry
    renewed.observe(Kind.ATTESTATION, attestation("hw-1"))
    assert expiry["hw-1"] == {"hyperwall": T0 + timedelta(seconds=10)}
    renewed.observe_renewals(renewals("hw-1", "hw-9"))  # hw-9: no NodeAttestation seen (yet)
    assert expiry["hw-1"] == {"hyperwall": T0 + timedelta(seconds=120)}
    assert "hw-9" not in expiry
    renewed.observe(Kind.ATTESTATION, attestation("hw-9"))  # the renewal was kept for it
    assert expiry["hw-9"] == {"hyperwall": T0 + timedelta(seconds=120)}
    # New evidence recorded (another digest): the old renewal no longer applies.
    renewed.observe(Kind.ATTESTATION, attestation("hw-1", rv=2, digest="b" * 64))
    assert expiry["hw-1"] == {"hyperwall": T0 + timedelta(seconds=10)}
    renewed.observe(Kind.ATTESTATION, attestation("hw-9"), deleted=True)
    assert "hw-9" not in expiry


def test_a_withdrawn_renewal_voids_the_profile_and_relocates(renewed: Controller, kube: FakeKube):
    async def go() -> None:
        task = _running_with_three_attested_nodes(renewed, kube)
        renewed.set_ready()
        renewed.observe_renewals(renewals("hw-1", "hw-2", "hw-3"))
        await settle(renewed)
        converge(renewed, kube, 1)
        await settle(renewed)
        kube.calls.clear()
        renewed.observe_renewals(renewals("hw-1", "hw-2", "hw-3"))  # the same again: a no-op
        await settle(renewed)
        assert kube.calls == []
        # hw-1's renewal now names other evidence: its verdict expired at T0 + 10 s.
        other = renewals("hw-2", "hw-3").renewals | renewals("hw-1", digest="c" * 64).renewals
        renewed.observe_renewals(RenewalList(renewals=other))
        await settle(renewed)
        assert ("status", "securevms", "vm0") in kube.calls
        assert any(c[:2] == ("create", "virtualmachineinstancemigrations") for c in kube.calls)
        task.cancel()

    asyncio.get_event_loop().run_until_complete(go())
