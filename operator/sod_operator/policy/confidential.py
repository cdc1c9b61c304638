"""Which class of satisfying profiles a VM is placed on, when they need different VM settings
(issue 14; docs/OPERATOR.md "Confidential profiles").

A class is the set of satisfying profiles that need the same VM settings
(`ServerSecurityProfile.spec.vmRequirements`). A VM can carry one class's settings only
(one `launchSecurity` member), so the operator places it on one class:

1. only classes compatible with the template: a template that sets launchSecurity itself runs
   only on profiles requiring that same member (anything else is a mismatch, never a move);
2. classes with a schedulable verified node first;
3. then the class the VM already carries (no restart just because another class appeared);
4. then the cheapest (lowest profile cost in the class), then the fewest settings, then by
   settings (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sod_operator.policy.matching import ProfileCapabilities
from sod_operator.policy.vmsettings import NONE, VMSettings


@dataclass(frozen=True)
class ClassChoice:
    """The chosen class: its settings and profiles; `mismatch` when none is compatible."""

    settings: VMSettings
    profiles: tuple[str, ...]
    mismatch: str = ""

    def describe(self) -> str:
        return f"[{', '.join(self.profiles)}] with {self.settings.describe()}"


def classes(
    satisfying: Sequence[str], catalog: Mapping[str, ProfileCapabilities]
) -> dict[VMSettings, tuple[str, ...]]:
    """Satisfying profiles grouped by the VM settings they need."""
    out: dict[VMSettings, list[str]] = {}
    for name in sorted(satisfying):
        profile = catalog.get(name)
        out.setdefault(profile.vm if profile else NONE, []).append(name)
    return {k: tuple(v) for k, v in out.items()}


def compatible(template: VMSettings, needed: VMSettings) -> bool:
    """A template that sets launchSecurity runs only where that same member is required."""
    return template.launch_security is None or template.launch_security == needed.launch_security


def choose_class(
    satisfying: Sequence[str],
    catalog: Mapping[str, ProfileCapabilities],
    template: VMSettings,
    current: VMSettings | None,
    eligible: Callable[[Sequence[str]], Sequence[str]],
) -> ClassChoice:
    """The class the VM is placed on (rules in the module docstring)."""
    groups = classes(satisfying, catalog)
    fitting = {k: v for k, v in groups.items() if compatible(template, k)}
    if groups and not fitting:
        wanted = f"launchSecurity.{template.launch_security}"
        offered = "; ".join(f"{', '.join(v)} need {k.describe()}" for k, v in groups.items())
        msg = (
            f"spec.template sets {wanted}, which no satisfying profile runs ({offered}): "
            "remove it from the template, or ask for protections a matching profile offers"
        )
        return ClassChoice(NONE, (), mismatch=msg)
    if not fitting:
        return ClassChoice(NONE, ())

    def rank(item: tuple[VMSettings, tuple[str, ...]]) -> tuple[bool, bool, int, int, str]:
        settings, profiles = item
        cost = min(catalog[p].cost if p in catalog else 1 for p in profiles)
        count = len(settings.describe().split(", ")) if settings != NONE else 0
        return (not eligible(profiles), settings != current, cost, count, settings.describe())

    settings, profiles = min(fitting.items(), key=rank)
    return ClassChoice(settings, profiles)
