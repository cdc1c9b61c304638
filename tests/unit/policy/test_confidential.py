"""Issue 14: confidential profiles make the VM confidential.

Class choice (`policy.confidential`), VM settings read and rendered (`policy.vmsettings`),
and the planner: the VM gets the chosen class's launchSecurity, a template's own
launchSecurity limits its profiles, and an instance without the settings is never Compliant.
"""

from __future__ import annotations

from sod_operator.api.vocabulary import Scope
from sod_operator.policy.confidential import choose_class
from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.plan import CreateVM, PatchVM, RestartVMI
from sod_operator.policy.vmsettings import NONE, VMSettings, carried, domain_patch, render

from tests.unit.policy.scenario import VM_B, Scenario, actions, condition

SNP = VMSettings("snp", efi=True)
TDX = VMSettings("tdx", efi=True)


def cap(name: str, vm: VMSettings = NONE, cost: int = 1) -> ProfileCapabilities:
    return ProfileCapabilities(name=name, cells={}, scope=Scope.FULL_VM, cost=cost, vm=vm)


CATALOG = {
    "sev-snp": cap("sev-snp", SNP, 5),
    "tdx": cap("tdx", TDX, 4),
    "hyperwall": cap("hyperwall", NONE, 9),
}


def test_cheapest_class_with_a_node_wins():
    got = choose_class(list(CATALOG), CATALOG, NONE, None, lambda p: ["n"])
    assert got.profiles == ("tdx",)
    assert got.settings == TDX


def test_a_class_without_a_schedulable_node_loses_to_a_dearer_one():
    got = choose_class(list(CATALOG), CATALOG, NONE, None, lambda p: [] if p == ("tdx",) else ["n"])
    assert got.profiles == ("sev-snp",)


def test_the_class_the_vm_carries_is_kept():
    got = choose_class(list(CATALOG), CATALOG, NONE, SNP, lambda p: ["n"])
    assert got.profiles == ("sev-snp",)


def test_a_template_with_launch_security_runs_only_on_its_member():
    got = choose_class(list(CATALOG), CATALOG, VMSettings("tdx"), None, lambda p: [])
    assert got.profiles == ("tdx",)
    bad = choose_class(["sev-snp", "hyperwall"], CATALOG, VMSettings("tdx"), None, lambda p: [])
    assert bad.profiles == ()
    assert "launchSecurity.tdx" in bad.mismatch


def test_settings_are_read_rendered_and_patched():
    spec = render({"template": {"spec": {"domain": {"cpu": {"cores": 1}}}}}, SNP)
    domain = spec["template"]["spec"]["domain"]
    assert domain["launchSecurity"] == {"snp": {}}
    assert domain["cpu"] == {"cores": 1}
    assert domain["firmware"]["bootloader"]["efi"] == {"secureBoot": False}
    assert carried(spec["template"]["spec"]) == SNP
    assert SNP.missing(NONE) == [
        "spec.domain.launchSecurity.snp",
        "spec.domain.firmware.bootloader.efi",
    ]
    patch = domain_patch(TDX)
    assert patch["launchSecurity"] == {"sev": None, "snp": None, "tdx": {}}
    assert domain_patch(NONE) == {"launchSecurity": None, "firmware": {"bootloader": {"efi": None}}}


# ------------------------------------------------------------------ the planner


def snp_fleet(**extra: object) -> Scenario:
    s = Scenario().profiles("sev-snp", "tpm")
    s.node("snp-1", "sev-snp").node("snp-2", "sev-snp").node("plain-1", "tpm")
    return s.securevm("vm", VM_B, **extra)


def test_vm_b_on_an_snp_fleet_is_created_with_launch_security_snp():
    plan = snp_fleet().plan("vm")
    body = actions(plan, CreateVM)[0].body
    domain = body["spec"]["template"]["spec"]["domain"]
    assert domain["launchSecurity"] == {"snp": {}}
    assert plan.status.placement_class is not None
    assert plan.status.placement_class.vm_settings.startswith("launchSecurity.snp")


def test_an_ordinary_instance_on_an_snp_node_is_never_compliant_and_is_restarted():
    s = snp_fleet(relocation={"restartAllowed": True}).vm_for("vm", vm_settings=SNP)
    s.vmi_for("vm", "snp-1")  # launched before the VM carried launchSecurity
    plan = s.plan("vm")
    assert condition(plan, "Compliant")[0] == "False"
    ready = next(c for c in plan.status.conditions or [] if c.type == "Ready")
    assert "spec.domain.launchSecurity.snp" in ready.message
    assert actions(plan, RestartVMI)


def test_without_restarts_the_instance_is_flagged_not_moved():
    s = snp_fleet().vm_for("vm", vm_settings=SNP).vmi_for("vm", "snp-1")
    plan = s.plan("vm")
    assert not actions(plan, RestartVMI)
    rel = next(c for c in plan.status.conditions or [] if c.type == "Relocating")
    assert "restartAllowed" in rel.message


def test_an_snp_instance_on_an_snp_node_is_compliant():
    s = snp_fleet().vm_for("vm", vm_settings=SNP).vmi_for("vm", "snp-1", vm_settings=SNP)
    plan = s.plan("vm")
    assert condition(plan, "Compliant") == ("True", "CompliantNode")
    assert not actions(plan, PatchVM)


def test_the_vm_template_gets_the_settings_it_lacks():
    plan = snp_fleet().vm_for("vm", vm_settings=NONE).plan("vm")
    patch = actions(plan, PatchVM)[-1].patch
    assert patch["spec"]["template"]["spec"]["domain"]["launchSecurity"]["snp"] == {}


def test_a_tdx_template_is_never_placed_on_snp():
    s = Scenario().profiles("sev-snp", "tpm").node("snp-1", "sev-snp")
    tdx_template = {"template": {"spec": {"domain": {"launchSecurity": {"tdx": {}}}}}}
    s.securevm("vm", VM_B, template=tdx_template)
    plan = s.plan("vm")
    assert not actions(plan, CreateVM)
    assert condition(plan, "Ready") == ("False", "LaunchSecurityMismatch")
