"""Declarative worlds for Scenario-style planner tests: (observed world, spec, now) → plan.

Profiles come from `examples/profiles/` (the paper's Table III rows), so the tests read like
the paper's story: VM-A (Basic), VM-B (Basic + HypervisorProtection), nodes verified as
hyperwall, tpm or plain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sod_operator.api.constants import VERIFIED, profile_label
from sod_operator.api.v1alpha1.parsing import parse_model
from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.securevm import SecureVMSpec, SecureVMStatus
from sod_operator.policy.observed import (
    LauncherPod,
    MigrationState,
    MigrationView,
    VMIView,
    VMView,
)
from sod_operator.policy.plan import Observation, Plan, SecureVMView
from sod_operator.policy.relocation import reconcile
from sod_operator.policy.settings import RelocationSettings
from sod_operator.policy.vmsettings import carried
from sod_operator.policy.world import World

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NS = "tenant"
UID = "0b7c6f4e-0000-4000-8000-000000000001"


def profile_spec(name: str) -> ServerSecurityProfileSpec:
    body = yaml.safe_load((ROOT / "examples" / "profiles" / f"{name}.yaml").read_text())
    return parse_model(ServerSecurityProfileSpec, body["spec"], "spec")


TEMPLATE: dict[str, Any] = {
    "runStrategy": "Always",
    "template": {"spec": {"domain": {"devices": {}}}},
}

VM_A = {"options": ["Basic"]}
VM_B = {"options": ["Basic", "HypervisorProtection"]}


def svm_spec(security: dict[str, Any], **extra: Any) -> SecureVMSpec:
    body: dict[str, Any] = {"security": security, "template": copy.deepcopy(TEMPLATE), **extra}
    return parse_model(SecureVMSpec, body, "spec")


def node_labels(*profiles: str, hostname: str | None = None) -> dict[str, str]:
    labels = {profile_label(p): VERIFIED for p in profiles}
    if hostname:
        labels["kubernetes.io/hostname"] = hostname
    return labels


@dataclass
class Scenario:
    """A world under construction; `plan()` runs one reconcile for the SecureVM `name`."""

    world: World = field(default_factory=World)
    settings: RelocationSettings = field(default_factory=RelocationSettings)
    now: datetime = T0

    def profiles(self, *names: str) -> Scenario:
        for n in names:
            self.world.apply_profile(n, profile_spec(n))
        return self

    def node(self, name: str, *profiles: str, schedulable: bool = True) -> Scenario:
        self.world.apply_node(name, node_labels(*profiles, hostname=name), schedulable, self.now)
        return self

    def securevm(
        self,
        name: str,
        security: dict[str, Any],
        *,
        generation: int = 1,
        status: SecureVMStatus | None = None,
        uid: str = UID,
        **extra: Any,
    ) -> Scenario:
        view = SecureVMView(
            NS, name, uid, generation, svm_spec(security, **extra), status or SecureVMStatus()
        )
        self.world.apply_securevm((NS, name), view)
        return self

    def vm_for(self, name: str, *, affinity: dict[str, Any] | None = None, **kw: Any) -> Scenario:
        """The VM the operator created (owned, annotated, with the desired affinity)."""
        from sod_operator.policy.plan import template_hash

        svm = self.world.svms[(NS, name)]
        assert svm.spec is not None
        assert svm.spec.template is not None
        if affinity is None:
            affinity = self.desired_affinity(name)
        if "vm_settings" not in kw:
            # As created: with the chosen class's launchSecurity/firmware (issue 14).
            kw["vm_settings"] = carried(self.desired_vm(name)["spec"]["template"]["spec"])
        view = VMView(
            NS,
            svm.vm_name,
            uid=f"vm-{name}",
            template_affinity=affinity,
            owner_uids=frozenset({svm.uid}),
            labels={"sod.dev/securevm": name},
            annotations={
                "sod.dev/template-hash": template_hash(svm.spec.template),
                **kw.pop("annotations", {}),
            },
            **kw,
        )
        self.world.apply_vm((NS, svm.vm_name), view)
        return self

    def vmi_for(
        self, name: str, node: str | None, *, affinity: dict[str, Any] | None = None, **kw: Any
    ) -> Scenario:
        svm = self.world.svms[(NS, name)]
        vm = self.world.vms[(NS, svm.vm_name)]
        uid = kw.pop("uid", f"vmi-{name}-{node}")
        view = VMIView(
            NS,
            svm.vm_name,
            uid=uid,
            phase="Running" if node else "Scheduling",
            node_name=kw.pop("label_node", node),
            reported_node=node,
            affinity=affinity if affinity is not None else vm.template_affinity,
            **kw,
        )
        self.world.apply_vmi((NS, svm.vm_name), view)
        if node:
            self.launcher_pod(svm.vm_name, uid, node)
        return self

    def launcher_pod(self, vm: str, vmi_uid: str, node: str, *, active: bool = True) -> Scenario:
        """The VMI's virt-launcher pod, bound to `node` (one per VMI and node)."""
        pod = LauncherPod(NS, f"virt-launcher-{vm}-{node}", vmi_uid, node, active)
        self.world.apply_launcher_pod((NS, pod.name), pod)
        return self

    def migration(
        self, name: str, vmi: str, phase: str, *, target: str = "", failure: str = "", **labels: str
    ) -> Scenario:
        state = MigrationState(target_node=target, failed=phase == "Failed", failure_reason=failure)
        view = MigrationView(
            NS, name, vmi, uid=f"mig-{name}", phase=phase, labels=labels, state=state
        )
        self.world.apply_migration((NS, name), view)
        return self

    def desired_vm(self, name: str) -> dict[str, Any]:
        """The VirtualMachine the planner would create (from a plan with no VM yet)."""
        obs = self.observe(name)
        plan = reconcile(replace(obs, vm=None, vmi=None), self.settings, self.now)
        body = next(
            a for a in plan.actions if hasattr(a, "body") and a.body["kind"] == "VirtualMachine"
        )
        vm: dict[str, Any] = body.body
        return vm

    def desired_affinity(self, name: str) -> dict[str, Any]:
        """What the planner wants the VM's affinity to be (from a plan with no VM yet)."""
        aff: dict[str, Any] = self.desired_vm(name)["spec"]["template"]["spec"]["affinity"]
        return aff

    def observe(self, name: str) -> Observation:
        obs = self.world.observation((NS, name))
        assert obs is not None
        return obs

    def plan(self, name: str, *, slot: bool = True, at: timedelta = timedelta()) -> Plan:
        return reconcile(self.observe(name), self.settings, self.now + at, slot_granted=slot)

    def apply_status(self, name: str, plan: Plan) -> Scenario:
        """Persist the plan's status, as the operator does before running its actions."""
        old = self.world.svms[(NS, name)]
        self.world.update_status((NS, name), replace(old, status=plan.status))
        return self

    def later(self, seconds: float) -> Scenario:
        self.now += timedelta(seconds=seconds)
        return self


def condition(plan: Plan, ctype: str) -> tuple[str, str]:
    """(status, reason) of a condition in the plan's status."""
    for c in plan.status.conditions or []:
        if c.type == ctype:
            return (str(c.status), c.reason)
    raise AssertionError(f"no condition {ctype}")


def actions(plan: Plan, kind: type) -> list[Any]:
    return [a for a in plan.actions if isinstance(a, kind)]
