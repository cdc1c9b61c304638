"""What a profile's evidence proves about a node, what the node only reports about itself,
and what no evidence here proves (issue 14; docs/ATTESTATION.md, "What a compromised node can
claim"). Shown by `sodctl explain` for the profiles that satisfy a request."""

from __future__ import annotations

from dataclasses import dataclass

from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec


@dataclass(frozen=True)
class EvidenceStatement:
    proves: tuple[str, ...]
    """Pinned by the TPM (EK enrollment, PCRs over the verifier's nonce)."""
    reported: tuple[str, ...]
    """Bound into the quote, but produced by software on the node: its own word."""
    unproven: tuple[str, ...]
    """What nothing in this product or in KubeVirt 1.9 proves."""


GUEST_LAUNCH = (
    "that the VM was launched as a confidential guest with the expected measurement: "
    "KubeVirt 1.9 performs no guest launch attestation (the operator only checks that the "
    "VMI spec carries the launchSecurity setting)"
)


def statement(spec: ServerSecurityProfileSpec) -> EvidenceStatement:
    """The statement for one profile, from its attestation policy and VM requirements."""
    pol = spec.attestation
    if pol is None:
        return EvidenceStatement((), (), ("anything: no attestation policy, never verified",))
    proves: list[str] = ["the node's TPM identity (EK certificate chain, credential activation)"]
    if pol.architecture:
        proves.append(
            f"architecture {pol.architecture}: the node's EK is enrolled for it by a "
            "PlatformEnrollment (the platform team's word, not the node's)"
        )
    if pol.tpm is not None and pol.tpm.pcrs:
        pcrs = ", ".join(str(p.index) for p in pol.tpm.pcrs)
        proves.append(f"its boot chain: golden PCR values ({pcrs}) in a fresh quote")
    if pol.measured_boot is not None:
        proves.append("its boot chain: the measured-boot event log replayed against the quote")
    reported = [f"CPU flag {f}" for f in pol.cpu_flags or []]
    reported += [f"module parameter {m.name}={m.value}" for m in pol.module_parameters or []]
    reported += [f"runtime counter {r.counter} <= {r.max}" for r in pol.runtime or []]
    unproven = (
        [GUEST_LAUNCH] if spec.vm_requirements and spec.vm_requirements.launch_security else []
    )
    return EvidenceStatement(tuple(proves), tuple(reported), tuple(unproven))


def describe(name: str, spec: ServerSecurityProfileSpec) -> list[str]:
    """Text lines for `sodctl explain`."""
    st = statement(spec)
    lines = [f"  {name}:"]
    lines += [f"    proven:   {p}" for p in st.proves]
    lines += [f"    reported by the node about itself: {r}" for r in st.reported]
    lines += [f"    NOT proven: {u}" for u in st.unproven]
    return lines
