"""Hardware facts and the simulated-architecture source: the non-TPM part of the evidence.

* CPU flags from /proc/cpuinfo (e.g. `sev_snp`, `tdx_guest`), sorted and unique.
* Parameters of the kvm modules from /sys/module/{kvm,kvm_amd,kvm_intel}/parameters/.
* A simulated-architecture source: a small JSON state file that declares an architecture
  (e.g. `hyperwall`) and its runtime counters (e.g. `memoryViolations`), programmable from
  tests and the demo (`sodctl sandbox break NODE --how violation` writes it). The paper's
  prototype simulated its secure servers the same way.

All of it ends up in `spec.claims`, which the TPM quote binds (see
`sod_operator.api.v1alpha1.nodeattestation.qualifying_data`); the verifier decides.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sod_operator.api.v1alpha1.nodeattestation import (
    ArchitectureSource,
    Claims,
    ModuleParameter,
    RuntimeCounter,
)

KVM_MODULES = ("kvm", "kvm_amd", "kvm_intel")
_FACT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
MAX_FLAGS = 512
MAX_PARAMETERS = 256


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The flags of the first CPU (all CPUs of a host share them)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return sorted({f for f in value.split() if _FACT.match(f) and len(f) <= 63})[:MAX_FLAGS]
    return []


def module_parameters(sys_module: Path = Path("/sys/module")) -> list[ModuleParameter]:
    out: list[ModuleParameter] = []
    for module in KVM_MODULES:
        params = sys_module / module / "parameters"
        if not params.is_dir():
            continue
        for path in sorted(params.iterdir()):
            try:
                value = path.read_text().strip()
            except OSError:
                continue  # some parameters are root-only or write-only
            if len(value) <= 63 and re.match(r"^[a-z0-9_]+$", path.name):
                out.append(ModuleParameter(name=f"{module}.{path.name}", value=value))
    return out[:MAX_PARAMETERS]


@dataclass(frozen=True)
class SimulatedState:
    """What the simulated-architecture source declares (the state file's content)."""

    architecture: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    cpu_flags: tuple[str, ...] = ()
    module_parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SimulatedState:
        """Read the state file; a missing file declares nothing."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a JSON simulated-architecture state: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        return cls(
            architecture=data.get("architecture") or None,
            counters={str(k): int(v) for k, v in (data.get("counters") or {}).items()},
            cpu_flags=tuple(str(f) for f in data.get("cpuFlags") or ()),
            module_parameters={
                str(k): str(v) for k, v in (data.get("moduleParameters") or {}).items()
            },
        )

    def to_json(self) -> dict[str, object]:
        return {
            "architecture": self.architecture,
            "counters": dict(sorted(self.counters.items())),
            "cpuFlags": list(self.cpu_flags),
            "moduleParameters": dict(sorted(self.module_parameters.items())),
        }

    def write(self, path: Path) -> None:
        """Write atomically (the agent may read concurrently)."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)


@dataclass(frozen=True)
class FactSources:
    """Where the agent reads its facts from (paths overridable for tests)."""

    cpuinfo: Path = Path("/proc/cpuinfo")
    sys_module: Path = Path("/sys/module")
    simulated: Path | None = None
    architecture: str | None = None
    """An architecture declared by configuration (`--architecture`), if not simulated."""


def collect(sources: FactSources) -> Claims:
    """The claims as of now."""
    sim = SimulatedState.load(sources.simulated) if sources.simulated else SimulatedState()
    flags = sorted(set(cpu_flags(sources.cpuinfo)) | set(sim.cpu_flags))[:MAX_FLAGS]
    params = {p.name: p.value for p in module_parameters(sources.sys_module)}
    params.update(sim.module_parameters)
    architecture, source = None, None
    if sim.architecture:
        architecture, source = sim.architecture, ArchitectureSource.SIMULATED
    elif sources.architecture:
        architecture, source = sources.architecture, ArchitectureSource.CONFIGURED
    return Claims(
        architecture=architecture,
        architecture_source=source,
        cpu_flags=flags,
        module_parameters=[ModuleParameter(name=k, value=v) for k, v in sorted(params.items())],
        counters=[RuntimeCounter(name=k, value=v) for k, v in sorted(sim.counters.items())],
    )
