"""Record golden evidence from real software TPMs for the pure unit tests.

    .venv/bin/python -m tests.node_agent.record_golden   # rewrites tests/unit/attestation/data/

Runs the real node-agent code (tpm2-pytss against swtpm) and the real verifier step
(`sod_operator.attestation.monitor.step`) on a HyperWall machine (its boot chain
`swtpm.boot_log("hyperwall")`, its EK enrolled for `hyperwall`) through a whole life:
enrollment, two good rounds, a memory violation, an unexpected PCR measurement, a quote by a
different AK, and a TPM whose EK certificate comes from a CA the verifier does not trust.
Every step stores the spec the agent wrote, the status the verifier had before, the nonces
it had published (`challenges`, a `ChallengeList`: the agent quotes over the newest), the
verifier's clock and the status it wrote, so unit tests can replay and tamper with real TPM
blobs and no TPM at all.

`recording.entropy` is deterministic so the verifier's nonces and challenges are
reproducible; the clock is real (EK certificates are valid from their manufacture time).
The verifier publishes a new nonce every `CHALLENGE_INTERVAL` (`challenges.rotate`).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sod_node_agent import facts
from sod_node_agent import tpm as agent_tpm
from sod_node_agent.evidence import produce
from sod_operator.api.v1alpha1.nodeattestation import (
    ChallengeList,
    NodeAttestation,
    NodeAttestationStatus,
)
from sod_operator.attestation import challenges, monitor
from sod_operator.attestation.ekcert import CaBundle
from sod_testbed import swtpm

from tests.unit.attestation.golden import GOLDEN_PCRS, SeededEntropy, enrollments, policies

OUT = Path(__file__).resolve().parents[1] / "unit" / "attestation" / "data" / "golden.json"
SELECTION = "sha256:0-7"
CHALLENGE_INTERVAL = timedelta(seconds=10)
KEEP_CHALLENGES = timedelta(minutes=5)


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def record() -> dict[str, Any]:
    os.environ.setdefault("TSS2_LOG", "all+none")
    entropy = SeededEntropy(b"sod golden evidence v1")
    work = Path(tempfile.mkdtemp(prefix="sod-golden-"))
    ca = swtpm.LocalCa(work / "ca")
    rogue_ca = swtpm.LocalCa(work / "rogue-ca")
    swtpm.manufacture(work / "node", ca)
    swtpm.manufacture(work / "rogue", rogue_ca)
    node = swtpm.Swtpm(work / "node")
    rogue = swtpm.Swtpm(work / "rogue")
    node.start()
    rogue.start()
    sim = work / "sim.json"
    sources = facts.FactSources(
        cpuinfo=work / "no-cpuinfo", sys_module=work / "no-sys-module", simulated=sim
    )
    selection = agent_tpm.PcrSelection.parse(SELECTION)
    settings = monitor.Settings(bundle=CaBundle.from_pem(ca.bundle_pem()))
    pols = policies()
    steps: list[dict[str, Any]] = []
    att = NodeAttestation(name="node-1")
    clock = datetime.now(UTC).replace(microsecond=0)
    published = ChallengeList()

    def newest(seconds: float) -> str:
        """The nonce the agent answers at `seconds`: the newest the verifier published."""
        nonlocal published
        now = clock + timedelta(seconds=seconds)
        rotated = challenges.rotate(published, now, CHALLENGE_INTERVAL, KEEP_CHALLENGES, entropy)
        published = rotated or published
        assert published.newest is not None
        return published.newest.nonce

    def agent(nonce: str | None, activate: bool, tcti: str = node.tcti, ak: bytes = b"") -> Any:
        with agent_tpm.session(tcti, ak_unique=ak) as session:
            return produce(
                session,
                facts.collect(sources),
                selection,
                att.status,
                att.spec if att.spec.tpm else None,
                nonce,
                activate,
            ).spec

    def verifier(name: str, spec: Any, seconds: float, keep: bool = True) -> None:
        nonlocal att
        now = clock + timedelta(seconds=seconds)
        before = att.status
        candidate = att.model_copy(update={"spec": spec, "generation": att.generation + 1})
        out = monitor.step(
            monitor.StepInput(
                candidate,
                monitor.NodeView({}),
                pols,
                now,
                enrollments=enrolled,
                challenges=published,
            ),
            settings,
            entropy,
        )
        steps.append(
            {
                "name": name,
                "now": now.isoformat(),
                "generation": candidate.generation,
                "spec": dump(spec),
                "statusBefore": dump(before),
                "challenges": dump(published),
                "statusAfter": dump(out.status),
                "evidenceReason": str(out.evidence_reason),
                "verified": out.status.verified_profiles,
            }
        )
        if keep:
            att = candidate.model_copy(update={"status": out.status})

    if swtpm.golden_pcrs("hyperwall") != GOLDEN_PCRS:
        raise SystemExit("tests/unit/attestation/golden.py GOLDEN_PCRS differ from the boot log")
    with agent_tpm.session(node.tcti) as session:  # the platform team enrolls it as HyperWall
        enrolled = enrollments(session.identity().ek_certificate)
    try:
        swtpm.simulated_boot(node.tcti, "hyperwall")
        facts.SimulatedState("hyperwall", {"memoryViolations": 0}).write(sim)
        verifier("identity", agent(None, False), 0)
        verifier("enrolled", agent(newest(1), True), 1)
        verifier("good", agent(newest(11), False), 11)
        verifier("good2", agent(newest(21), False), 21)
        facts.SimulatedState("hyperwall", {"memoryViolations": 3}).write(sim)
        verifier("violation", agent(newest(31), False), 31)
        facts.SimulatedState("hyperwall", {"memoryViolations": 0}).write(sim)
        swtpm.extend(node.tcti, [(4, b"unexpected kernel module: rootkit.ko")])
        verifier("pcrExtended", agent(newest(41), False), 41)
        verifier("otherAk", agent(newest(51), False, ak=b"another AK"), 51, False)
        rogue_status = NodeAttestationStatus()
        with agent_tpm.session(rogue.tcti) as session:
            rogue_spec = produce(
                session, facts.collect(sources), selection, rogue_status, None, None, False
            ).spec
    finally:
        node.stop()
        rogue.stop()
    return {
        "comment": "recorded by tests/node_agent/record_golden.py from swtpm; do not edit",
        "caBundle": ca.bundle_pem().decode(),
        "rogueCaBundle": rogue_ca.bundle_pem().decode(),
        "goldenPcrs": {str(k): v for k, v in GOLDEN_PCRS.items()},
        "pcrSelection": SELECTION,
        "entropySeed": entropy.seed.decode(),
        "steps": steps,
        "rogueSpec": dump(rogue_spec),
    }


def main() -> None:
    data = record()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT} ({len(data['steps'])} steps)")
    for step in data["steps"]:
        print(
            f"  {step['name']:12} evidence={step['evidenceReason']:24} verified={step['verified']}"
        )


if __name__ == "__main__":
    main()
