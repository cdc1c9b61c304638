"""The planner's side of issue 14: choose the class (`policy.confidential`), narrow the
request's satisfying profiles to it, render its settings into the VM, and check that the
running instance carries what its node's profile needs."""

from __future__ import annotations

from dataclasses import replace

from sod_operator.api.conditions import ConditionType, EventReason, Reason
from sod_operator.api.v1alpha1.securevm import PlacementClass
from sod_operator.policy.confidential import choose_class
from sod_operator.policy.observed import VMIView, vmi_template_spec
from sod_operator.policy.plan import Event, EventType, Observation, PatchVM
from sod_operator.policy.planning import Planning
from sod_operator.policy.vmsettings import NONE, VMSettings, carried, domain_patch, merged


def choose_vm_class(ctx: Planning) -> bool:
    """Narrow `ctx.obs.resolution.satisfying` to the chosen class; False on a mismatch."""
    obs, spec = ctx.obs, ctx.svm.spec
    assert spec is not None
    res = obs.resolution
    template = carried(vmi_template_spec(spec.template)) if spec.template is not None else NONE
    current = obs.vm.vm_settings if obs.vm is not None else None
    choice = choose_class(
        res.satisfying,
        obs.catalog,
        template,
        current,
        lambda profiles: obs.nodes.eligible(profiles, ()),
    )
    if choice.mismatch:
        ctx.cond.true(ConditionType.UNSATISFIABLE, Reason.LAUNCH_SECURITY_MISMATCH, choice.mismatch)
        ctx.cond.false(ConditionType.READY, Reason.LAUNCH_SECURITY_MISMATCH, choice.mismatch)
        ctx.status.placement_class = None
        return False
    several = len({obs.catalog[p].vm for p in res.satisfying if p in obs.catalog}) > 1
    ctx.status.placement_class = (
        PlacementClass(profiles=list(choice.profiles), vm_settings=choice.settings.describe())
        if several or choice.settings != NONE
        else None
    )
    ctx.vm_class = choice.settings
    ctx.obs = replace(obs, resolution=replace(res, satisfying=choice.profiles))
    return True


def class_settings(obs: Observation) -> VMSettings:
    """The settings of the chosen class (after `choose_vm_class`, all its profiles agree)."""
    profile = next((obs.catalog[p] for p in obs.resolution.satisfying if p in obs.catalog), None)
    return profile.vm if profile is not None else NONE


def desired_settings(obs: Observation) -> VMSettings:
    """What the VM must carry: the chosen class's settings plus the tenant's own (an adopted
    VM's current settings stand for the tenant's: the operator never removes them)."""
    spec = obs.svm.spec
    if spec is not None and spec.template is not None:
        tenant = carried(vmi_template_spec(spec.template))
    else:
        tenant = obs.vm.vm_settings if obs.vm is not None else NONE
    return merged(tenant, class_settings(obs))


def ensure_vm_settings(ctx: Planning) -> None:
    """Make the VM template carry the desired settings (KubeVirt applies them at the next
    start: a running instance without them is restarted by `rules.settings_need_restart`)."""
    vm = ctx.obs.vm
    desired = desired_settings(ctx.obs)
    if vm is None or vm.vm_settings == desired:
        return
    event = Event(
        EventType.NORMAL,
        EventReason.VM_UPDATED,
        f"the VM now carries {desired.describe()}: the profiles it is placed on protect only "
        "VMs launched with their settings",
    )
    patch = {"spec": {"template": {"spec": {"domain": domain_patch(desired)}}}}
    ctx.act(PatchVM(vm.name, patch), event)


def missing_settings(obs: Observation, profile: str | None, vmi: VMIView) -> list[str]:
    """What the running instance lacks of the settings `profile` needs (empty: nothing)."""
    if profile is None or profile not in obs.catalog:
        return []
    return obs.catalog[profile].vm.missing(vmi.vm_settings)
