"""What a VM must carry for a profile's protections to hold (issue 14), and reading/rendering
it on KubeVirt objects.

KubeVirt v1.9.0: `spec.domain.launchSecurity` has the members `sev`, `snp`, `tdx`; firmware is
`spec.domain.firmware.bootloader.efi{secureBoot}`. virt-controller adds the node selector
`kubevirt.io/<sev|sev-snp|tdx>=true` to the launcher pod of such a VM, and virt-handler marks
its VMI `LiveMigratable=False`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sod_operator.api.v1alpha1.profile import VMRequirements

Json = dict[str, Any]


@dataclass(frozen=True, order=True)
class VMSettings:
    """A class of VM settings; profiles needing equal settings form one placement class."""

    launch_security: str | None = None
    efi: bool = False
    secure_boot: bool = False

    @classmethod
    def from_spec(cls, req: VMRequirements | None) -> VMSettings:
        if req is None:
            return NONE
        fw = req.firmware
        secure = bool(fw and fw.secure_boot)
        return cls(
            launch_security=str(req.launch_security) if req.launch_security else None,
            efi=bool(fw and fw.efi) or secure,
            secure_boot=secure,
        )

    def describe(self) -> str:
        parts = [f"launchSecurity.{self.launch_security}"] if self.launch_security else []
        if self.secure_boot:
            parts.append("firmware.bootloader.efi.secureBoot")
        elif self.efi:
            parts.append("firmware.bootloader.efi")
        return ", ".join(parts) or "no VM settings"

    def missing(self, carried: VMSettings) -> list[str]:
        """The settings this class needs that `carried` (a VMI's) lacks, by KubeVirt path."""
        out = []
        if self.launch_security and carried.launch_security != self.launch_security:
            out.append(f"spec.domain.launchSecurity.{self.launch_security}")
        if self.efi and not carried.efi:
            out.append("spec.domain.firmware.bootloader.efi")
        if self.secure_boot and not carried.secure_boot:
            out.append("spec.domain.firmware.bootloader.efi.secureBoot")
        return out


NONE = VMSettings()


def _domain(vmi_spec: Mapping[str, Any] | None) -> Mapping[str, Any]:
    domain = (vmi_spec or {}).get("domain")
    return domain if isinstance(domain, Mapping) else {}


def carried(vmi_spec: Mapping[str, Any] | None) -> VMSettings:
    """The settings a VMI spec (or a VM's `spec.template.spec`) carries."""
    domain = _domain(vmi_spec)
    ls = domain.get("launchSecurity")
    member = next(iter(sorted(ls)), None) if isinstance(ls, Mapping) and ls else None
    boot = ((domain.get("firmware") or {}).get("bootloader") or {}) if domain else {}
    efi = boot.get("efi") if isinstance(boot, Mapping) else None
    secure = isinstance(efi, Mapping) and efi.get("secureBoot") is not False
    return VMSettings(launch_security=member, efi=efi is not None, secure_boot=secure)


def merged(tenant: VMSettings, needed: VMSettings) -> VMSettings:
    """What the VM must carry: the class's settings plus whatever the tenant wrote."""
    return VMSettings(
        launch_security=needed.launch_security or tenant.launch_security,
        efi=needed.efi or tenant.efi,
        secure_boot=needed.secure_boot or tenant.secure_boot,
    )


def domain_patch(settings: VMSettings) -> Json:
    """A merge patch of `spec.domain` that makes a VM template carry exactly `settings`
    (launchSecurity members other than the wanted one are removed: one member only)."""
    members: Json = {m: None for m in LAUNCH_SECURITY_MEMBERS if m != settings.launch_security}
    if settings.launch_security:
        members[settings.launch_security] = {}
    patch: Json = {"launchSecurity": members if settings.launch_security else None}
    efi: Json | None = {"secureBoot": settings.secure_boot} if settings.efi else None
    patch["firmware"] = {"bootloader": {"efi": efi}}
    return patch


LAUNCH_SECURITY_MEMBERS = ("sev", "snp", "tdx")


def render(vm_spec: Mapping[str, Any], settings: VMSettings) -> Json:
    """`vm_spec` (a VirtualMachineSpec) with the class's settings in its template's domain.

    Settings the tenant wrote are kept; the class's are added (a template whose own
    launchSecurity differs is never placed on this class: `confidential.compatible`)."""
    out = copy.deepcopy(dict(vm_spec))
    if settings == NONE:
        return out
    domain = out.setdefault("template", {}).setdefault("spec", {}).setdefault("domain", {})
    if settings.launch_security:
        domain.setdefault("launchSecurity", {}).setdefault(settings.launch_security, {})
    if settings.efi:
        boot = domain.setdefault("firmware", {}).setdefault("bootloader", {})
        efi = boot.setdefault("efi", {})
        efi["secureBoot"] = settings.secure_boot or bool(efi.get("secureBoot", False))
    return out
