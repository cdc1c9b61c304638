"""Attestation (issue 7, item 5): quote + verify latency per node on swtpm, and the verifier's
throughput in nodes per second with 8 and 32 concurrent agents.

Latency runs the project's own protocol in-process, without the apiserver in between: the
node-agent's round (`sod_node_agent.tpm.session` + `evidence.produce`: open the TPM, derive the
AK, read and quote the PCRs over the verifier's nonce and the claims) against a real swtpm, then
the verifier's step (`sod_operator.attestation.monitor.step`: EK chain, enrollment, quote
signature, nonce, PCR digest, every profile's policy, the next nonce). The baseline does the
same round the usual shell way, with tpm2-tools (`tpm2_createprimary`, `tpm2_quote`,
`tpm2_checkquote`) on the same swtpm: it checks less (no EK chain, no policy), so the ratio
favours the baseline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import deps
from bench.stats import Figure, Result, Target

NAME = "attestation"
TITLE = "Attestation"

AGENT_MODULES = (
    "sod_node_agent.tpm",
    "sod_node_agent.evidence",
    "sod_node_agent.facts",
    "sod_operator.attestation.monitor",
    "sod_testbed.swtpm",
)
VERIFIER_MODULES = ("sod_operator.verifier.main", "sod_operator.verifier.controller")
TPM2_TOOLS = ("tpm2_createprimary", "tpm2_readpublic", "tpm2_quote", "tpm2_checkquote")
PCRS = "sha256:0-7"
ARCHITECTURE = "tpm-measured-boot"
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"

# The TSS logs expected misses (e.g. probing for a persistent EK) as errors.
os.environ.setdefault("TSS2_LOG", "all+none")


def missing() -> str | None:
    return deps.reason(AGENT_MODULES, binaries=("swtpm", "swtpm_setup", "swtpm_localca"))


def _policies() -> dict[str, Any]:
    from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
    from sod_testbed.swtpm import golden_pcrs

    golden = [{"index": i, "values": [v]} for i, v in golden_pcrs(ARCHITECTURE).items()]
    return {
        ARCHITECTURE: AttestationPolicy.model_validate(
            {
                "architecture": ARCHITECTURE,
                "tpm": {"pcrBank": "SHA256", "pcrs": golden},
                "freshnessSeconds": 60,
            }
        ),
        "hyperwall": AttestationPolicy.model_validate(
            {"architecture": "hyperwall", "runtime": [{"counter": "memoryViolations", "max": 0}]}
        ),
    }


def _enrolled(tcti: str, name: str) -> Any:
    """The platform team's enrollment of the node's TPM for ARCHITECTURE (PlatformEnrollment)."""
    from cryptography import x509
    from sod_node_agent import tpm as agent_tpm
    from sod_operator.attestation import platform

    with agent_tpm.session(tcti) as session:
        cert = x509.load_der_x509_certificate(session.identity().ek_certificate)
    return platform.index([(name, ARCHITECTURE, platform.ek_fingerprint(cert))])


class SimulatedNode:
    """One node: its swtpm, the agent's side and the verifier's side of the protocol."""

    def __init__(self, directory: Path, ca: Any, name: str) -> None:
        from sod_node_agent import facts
        from sod_node_agent import tpm as agent_tpm
        from sod_operator.api.v1alpha1.nodeattestation import NodeAttestation
        from sod_operator.attestation import monitor
        from sod_operator.attestation.ekcert import CaBundle
        from sod_testbed import swtpm

        swtpm.manufacture(directory / name, ca)
        self.tpm = swtpm.Swtpm(directory / name)
        self.tpm.start()
        swtpm.simulated_boot(self.tpm.tcti, ARCHITECTURE)
        self.selection = agent_tpm.PcrSelection.parse(PCRS)
        self.claims = facts.collect(facts.FactSources(architecture=ARCHITECTURE))
        self.settings = monitor.Settings(bundle=CaBundle.from_pem(ca.bundle_pem()))
        self.policies = _policies()
        self.node = monitor.NodeView(labels={})
        self.att = NodeAttestation(name=name)
        self.enrollments = _enrolled(self.tpm.tcti, name)

    def agent_round(self) -> None:
        """What the agent does for one nonce (or enrollment challenge)."""
        from sod_node_agent import tpm as agent_tpm
        from sod_node_agent.evidence import produce
        from sod_operator.api.v1alpha1.nodeattestation import EnrollmentState

        status = self.att.status
        enrolled = status.enrollment is not None and (
            status.enrollment.state == EnrollmentState.ENROLLED
        )
        nonce = status.challenge.nonce if enrolled and status.challenge else None
        previous = self.att.spec if self.att.spec.tpm is not None else None
        with agent_tpm.session(self.tpm.tcti) as session:
            spec = produce(session, self.claims, self.selection, status, previous, nonce, True).spec
        self.att = self.att.model_copy(update={"spec": spec, "generation": self.att.generation + 1})

    def verifier_step(self) -> Any:
        from sod_operator.attestation import monitor

        out = monitor.step(
            monitor.StepInput(
                self.att, self.node, self.policies, datetime.now(UTC), enrollments=self.enrollments
            ),
            self.settings,
            os.urandom,
        )
        self.att = self.att.model_copy(update={"status": out.status})
        return out

    def enroll(self) -> None:
        for _ in range(6):
            self.agent_round()
            out = self.verifier_step()
            if str(out.evidence_reason) == "Verified":
                return
        raise RuntimeError(f"node did not verify: {out.evidence_reason}")

    def stop(self) -> None:
        self.tpm.stop()


def _cli_round(tcti: str, workdir: Path) -> tuple[float, float]:
    """One tpm2-tools round on the same TPM: (agent ms, verifier ms)."""
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}

    def run(*argv: str) -> None:
        out = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")

    nonce = os.urandom(32).hex()
    t0 = time.perf_counter()
    run("tpm2_createprimary", "-Q", "-C", "e", "-G", "ecc256:ecdsa-sha256:null",
        "-a", AK_ATTRIBUTES, "-c", "ak.ctx")  # fmt: skip
    run("tpm2_readpublic", "-Q", "-c", "ak.ctx", "-f", "pem", "-o", "ak.pem")
    run("tpm2_quote", "-Q", "-c", "ak.ctx", "-l", "sha256:0,1,2,3,4,5,6,7", "-q", nonce,
        "-m", "msg", "-s", "sig", "-o", "pcrs", "-g", "sha256")  # fmt: skip
    run("tpm2_flushcontext", "-t")
    t1 = time.perf_counter()
    run("tpm2_checkquote", "-Q", "-u", "ak.pem", "-m", "msg", "-s", "sig", "-f", "pcrs",
        "-g", "sha256", "-q", nonce)  # fmt: skip
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def _case(node: SimulatedNode, name: str = "genuine") -> Any:
    """The node's current quote as both verifiers see it."""
    from bench import quotecheck

    ev = node.att.spec.tpm
    return quotecheck.Case(
        name, ev, node.att.spec.claims, node.att.status.challenge, ev.ak_public, True
    )


def _versus_keylime(
    result: Result, node: SimulatedNode, workdir: Path, ca: Any, trials: int
) -> None:
    """Keylime's quote check and ours on the same quotes: time per quote, quotes per second
    (batches), and the verdicts on each genuine quote and four tampered copies of it."""
    from bench import quotecheck

    why = quotecheck.missing()
    if why:
        result.not_run["Keylime's quote check on the same quotes"] = why
        return
    other = SimulatedNode(workdir, ca, "node-other")  # a second TPM: its AK is "other AK"
    try:
        other.agent_round()
        other_ak = other.att.spec.tpm.ak_public
    finally:
        other.stop()
    ours_ms: list[float] = []
    keylime_ms: list[float] = []
    binding_ms: list[float] = []
    verdicts: list[quotecheck.Verdicts] = []
    quotes: list[tuple[Any, Any]] = []
    for i in range(trials + 2):
        node.agent_round()
        case = _case(node)
        verdicts += quotecheck.compare(
            [case, *quotecheck.tampered(case, other_ak, os.urandom(32).hex())]
        )
        inputs = quotecheck.keylime_inputs(case)
        quotes.append((case, inputs))
        ours = quotecheck.time_each(lambda c=case: quotecheck.our_check(c))
        theirs = quotecheck.time_each(lambda x=inputs: quotecheck.keylime_check(x))
        binding = quotecheck.time_each(lambda c=case: quotecheck.claims_binding(c))
        if i >= 2:  # warm-up
            ours_ms.append(ours)
            keylime_ms.append(theirs)
            binding_ms.append(binding)
        out = node.verifier_step()
        if str(out.evidence_reason) != "Verified":
            raise RuntimeError(f"a Keylime trial did not verify: {out.evidence_reason}")
    ours_rate, keylime_rate = _batch_rates(quotes, batches=max(5, trials // 10))
    label = f"Keylime {quotecheck.KEYLIME_VERSION} `tpm_util.checkquote` (same quotes)"
    result.figures += [
        Figure(
            id="quote_check_vs_keylime",
            label="quote check, one quote: ours (`verify.check_quote`)",
            unit="ms",
            better="lower",
            samples=ours_ms,
            baseline_label=label,
            baseline_samples=keylime_ms,
        ),
        Figure(
            id="claims_binding",
            label="of which: the expected extraData H(nonce || claims), a binding Keylime's "
            "quote check does not make (it is given the expected nonce)",
            unit="ms",
            better="lower",
            samples=binding_ms,
        ),
        Figure(
            id="quote_checks_per_second",
            label="quote checks per second, one core, in process, batches of every quote",
            unit="quotes/s",
            better="higher",
            samples=ours_rate,
            baseline_label=label,
            baseline_samples=keylime_rate,
        ),
    ]
    _verdict_table(result, verdicts)


def _batch_rates(quotes: list[tuple[Any, Any]], batches: int) -> tuple[list[float], list[float]]:
    """Quotes per second of each verifier over all `quotes`, batches alternating."""
    from bench import quotecheck

    ours: list[float] = []
    keylime: list[float] = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for case, _inputs in quotes:
            if quotecheck.our_check(case) is not None:
                raise RuntimeError("our check rejected a genuine quote in a batch")
        t1 = time.perf_counter()
        for _, inputs in quotes:
            if quotecheck.keylime_check(inputs) is not None:
                raise RuntimeError("Keylime rejected a genuine quote in a batch")
        t2 = time.perf_counter()
        ours.append(len(quotes) / (t1 - t0))
        keylime.append(len(quotes) / (t2 - t1))
    return ours, keylime


def _verdict_table(result: Result, verdicts: list[Any]) -> None:
    rows = []
    for name in dict.fromkeys(v.case for v in verdicts):
        mine = [v for v in verdicts if v.case == name]
        split = [v for v in mine if not v.agree]
        first = (split or mine)[0]
        rows.append(
            [
                name,
                len(mine),
                sum(v.ours is None for v in mine),
                sum(v.keylime is None for v in mine),
                len(mine) - len(split),
                first.ours or "accepted",
                first.keylime or "accepted",
            ]
        )
        for v in split:
            result.notes.append(
                f"**Disagreement** on a {name} quote: ours "
                f"{v.ours or 'accepted'}; Keylime {v.keylime or 'accepted'}."
            )
    result.add_table(
        "Verdicts on the same quotes: ours and Keylime's",
        [
            "evidence",
            "quotes",
            "accepted by ours",
            "accepted by Keylime",
            "verdicts agree",
            "our reason (first)",
            "Keylime's error (first)",
        ],
        rows,
        note="Tampered copies of every genuine quote: the last byte of the signature flipped; "
        "the first reported PCR value changed after quoting; the verifier expecting another "
        "nonce than the one quoted; the quote checked against another swtpm's AK.",
    )


def _latency(result: Result, workdir: Path, trials: int, base_trials: int) -> None:
    from sod_testbed import swtpm

    ca = swtpm.LocalCa(workdir / "ca")
    node = SimulatedNode(workdir, ca, "node-0")
    try:
        node.enroll()
        agent_ms: list[float] = []
        verify_ms: list[float] = []
        for _ in range(trials + 2):
            t0 = time.perf_counter()
            node.agent_round()
            t1 = time.perf_counter()
            out = node.verifier_step()
            t2 = time.perf_counter()
            if not out.new_evidence or str(out.evidence_reason) != "Verified":
                raise RuntimeError(f"a trial did not verify: {out.evidence_reason}")
            if ARCHITECTURE not in out.status.verified_profiles:
                raise RuntimeError(f"{ARCHITECTURE} not verified: {out.status.verified_profiles}")
            agent_ms.append((t1 - t0) * 1000)
            verify_ms.append((t2 - t1) * 1000)
        agent_ms, verify_ms = agent_ms[2:], verify_ms[2:]  # warm-up
        cli_agent: list[float] = []
        cli_verify: list[float] = []
        cli_missing = deps.missing_binaries(TPM2_TOOLS)
        if cli_missing:
            result.not_run["tpm2-tools baseline"] = "not installed: " + ", ".join(cli_missing)
        else:
            for _ in range(base_trials):
                a, v = _cli_round(node.tpm.tcti, workdir)
                cli_agent.append(a)
                cli_verify.append(v)
        _versus_keylime(result, node, workdir, ca, trials)
    finally:
        node.stop()
    total = [a + v for a, v in zip(agent_ms, verify_ms, strict=True)]
    cli_total = [a + v for a, v in zip(cli_agent, cli_verify, strict=True)]
    label = "tpm2-tools CLI (createprimary, quote, checkquote)"
    result.figures += [
        Figure(
            id="quote_verify",
            label="quote + verify, one node (agent round + verifier step)",
            unit="ms",
            better="lower",
            samples=total,
            baseline_label=label if cli_total else None,
            baseline_samples=cli_total or None,
            targets=[Target("median", "<=", 10.0)],
        ),
        Figure(
            id="agent_round",
            label="agent round: open TPM, derive AK, read PCRs, quote",
            unit="ms",
            better="lower",
            samples=agent_ms,
            baseline_label="tpm2_createprimary + readpublic + quote + flushcontext"
            if cli_agent
            else None,
            baseline_samples=cli_agent or None,
        ),
        Figure(
            id="verifier_step",
            label="verifier step: identity, enrollment, quote, policies, next nonce",
            unit="ms",
            better="lower",
            samples=verify_ms,
            baseline_label="tpm2_checkquote (signature, nonce, PCR digest only)"
            if cli_verify
            else None,
            baseline_samples=cli_verify or None,
        ),
    ]


def run(quick: bool = False) -> Result:
    trials = 20 if quick else 100
    base_trials = 5 if quick else 20
    result = Result(name=NAME, title=TITLE)
    result.params = {"trials": trials, "baseline_trials": base_trials, "pcrs": PCRS}
    result.method = f"""\
**Quote + verify latency.** One swtpm ({PCRS}, booted with the sandbox's simulated boot log),
enrolled once by the project's own credential-activation protocol. One trial = one nonce: the
node-agent's round (`sod_node_agent.tpm.session` + `evidence.produce`: open the TPM, derive the
AK, read and quote the PCRs over H(nonce || claims)) and the verifier's step
(`sod_operator.attestation.monitor.step`: EK chain to the CA bundle, enrollment, quote signature,
nonce, PCR digest, the golden-PCR and runtime-counter policies, the next nonce), in-process, so
the apiserver round trips are not in this figure (they are in the throughput figure). Every
trial's evidence must verify. Baseline: the same round with tpm2-tools on the same swtpm (one
process per command, as shell-script attestation does); it checks less than ours (no EK chain,
no policy), and its agent side creates the same ECC P-256 AK.

**Against Keylime, on identical evidence.** In the same run, on the same enrolled swtpm, each
trial's quote is checked by our `verify.check_quote` and by Keylime's quote check
(`keylime.tpm.tpm_util.checkquote` after `tpm2_objects.pubkey_from_tpm2b_public`, what
Keylime's `Tpm.check_quote` runs before its PCR policy; `bench/quotecheck.py` says what is
adapted: the format of the PCR values, and the expected extraData, which our agent binds to
H(nonce || claims)). Time per quote: one call each, right after the quote was made; ours
starts from the evidence as the verifier holds it (base64, the claims), Keylime's from bytes
already decoded and the expected nonce already computed, so ours also pays the decoding and
the claims binding, which is timed on its own as well (`claims_binding`). Quotes
per second: every collected quote checked in a batch, ours then Keylime's, repeated. Both
also judge four tampered copies of every genuine quote; a disagreement is listed below the
table, not dropped. Keylime's `tpm_main` (the PCR policy, IMA, measured boot) is not called:
importing it needs the GPGME Python bindings, which do not build from PyPI on Python 3.11
here; so the scope compared is signature, nonce and PCR digest, which ours also parses from
base64 and checks the PCR selection for.
"""
    workdir = Path(tempfile.mkdtemp(prefix="sod-bench-att-"))
    try:
        _latency(result, workdir, trials, base_trials)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    why = deps.reason(VERIFIER_MODULES, testbed=True)
    if why:
        result.not_run["verifier throughput with 8 and 32 concurrent agents"] = why
        return result
    bursts = 5 if quick else 12
    result.params.update({"throughput_bursts": bursts})
    if quick:
        result.not_run["verifier throughput with 32 concurrent agents"] = "skipped in --quick"
    for agents in (8,) if quick else (8, 32):
        for hold, fid, what in (
            (True, f"verifier_throughput_{agents}", "agents paused while it drains"),
            (False, f"sandbox_throughput_{agents}", "agents answering meanwhile, same cores"),
        ):
            rates, cpu_ms, sys_cpu, server_ms = _throughput(agents, bursts, hold)
            cpu = sorted(cpu_ms)[len(cpu_ms) // 2]
            result.figures.append(
                Figure(
                    id=fid,
                    label=f"verifier throughput, {agents} concurrent agents ({what})",
                    unit="nodes/s",
                    better="higher",
                    samples=rates,
                    targets=[Target("median", ">=", 200.0)] if hold else [],
                    note=f"CPU per verified quote (medians): verifier {cpu:.2f} ms "
                    f"({1000 / max(cpu, 1e-9):.0f} nodes/s per core), kube-apiserver + etcd "
                    f"{server_ms:.2f} ms; the whole machine was busy {sys_cpu:.0f} % during the "
                    "bursts.",
                )
            )
            if hold:
                result.figures.append(
                    Figure(
                        id=f"verifier_cpu_per_node_{agents}",
                        label=f"verifier CPU per verified quote, {agents} agents",
                        unit="ms",
                        better="lower",
                        samples=cpu_ms,
                    )
                )
    result.method += f"""
**Verifier throughput.** A sandbox with N = 8, then 32 kwok nodes and the sandbox's trust
monitor (`sod_testbed.trust`): per node a swtpm and a `sod-node-agent` process with a
ServiceAccount token bound to its Node, one `sod-verifier run` process with its own
ServiceAccount, and the trust monitor's RBAC and admission policies, as in a cluster.
Once every node is verified for `{ARCHITECTURE}`, each of {bursts} bursts holds
the verifier (SIGSTOP) until every agent has written evidence answering its outstanding nonce,
then releases it (SIGCONT) and measures, from a watch on NodeAttestations, when the verifier
has consumed all N (`status.evidence.observedGeneration` reaching each object's generation):
nodes/s = N / that time. The headline figure pauses the agents (SIGSTOP) while the verifier
drains, as their nodes would be other machines in a cluster: the verifier, kube-apiserver and
etcd share the two cores. The second figure lets the agents run on (they answer the new nonces,
quoting on their swtpms): the rate of the whole sandbox under contention. The verifier runs
`--workers 4` (the chart's default). CPU per verified quote of the verifier and of
kube-apiserver + etcd is given, so the ceiling of two cores can be read off. No baseline:
no peer verifier service (Keylime's verifier with its agents) ran on this bed, and a rate
derived from a latency is not a measurement; Keylime's own quote check is measured on the
same quotes above (`quote_checks_per_second`), in process on one core, without the
apiserver write that dominates here.
"""
    return result


def _generations(api: Any) -> dict[str, tuple[int, list[str]]]:
    from sod_testbed.kubeapi import resource_path

    items = api.list(resource_path("sod.dev/v1alpha1", "nodeattestations")).get("items", [])
    out = {}
    for obj in items:
        status = obj.get("status") or {}
        gen = int((status.get("evidence") or {}).get("observedGeneration") or 0)
        out[obj["metadata"]["name"]] = (gen, list(status.get("verifiedProfiles") or []))
    return out


def _pending(api: Any) -> dict[str, tuple[int, int]]:
    """name -> (metadata.generation, status.evidence.observedGeneration)."""
    from sod_testbed.kubeapi import resource_path

    items = api.list(resource_path("sod.dev/v1alpha1", "nodeattestations")).get("items", [])
    return {
        o["metadata"]["name"]: (
            int(o["metadata"].get("generation") or 0),
            int(((o.get("status") or {}).get("evidence") or {}).get("observedGeneration") or 0),
        )
        for o in items
    }


def _throughput(
    agents: int, bursts: int, hold_agents: bool
) -> tuple[list[float], list[float], float, float]:
    """(nodes/s per burst, verifier CPU ms per verified quote per burst, machine busy %,
    kube-apiserver + etcd CPU ms per verified quote (median)).

    With `hold_agents` the agents are paused while the verifier drains (in a cluster they run on
    other machines); otherwise they answer the new nonces meanwhile, on the same two cores."""
    from sod_testbed.handler_player import PlayerConfig
    from sod_testbed.kubeapi import resource_path
    from sod_testbed.nodes import parse_nodes
    from sod_testbed.trust import TrustBed, TrustConfig

    from bench import testbed

    nodes = parse_nodes(f"{ARCHITECTURE}={agents}")
    with testbed.sandbox(nodes, PlayerConfig(), f"att{agents}") as bed:
        # The sandbox's trust monitor, least privilege as in a cluster: node-bound agent
        # tokens, the verifier's own ServiceAccount, the admission policies. --interval 0.5:
        # an agent answers a new nonce at most twice a second.
        trust = TrustBed(bed.cluster, TrustConfig(agent_interval=0.5))
        watch = testbed.ObjectWatch(
            bed.cluster.kubeconfig,
            resource_path("sod.dev/v1alpha1", "nodeattestations"),
            keep_history=True,
        )
        try:
            for n in nodes:
                trust.start_node(n)
            trust.start_verifier()
            verifier = bed.cluster.processes["verifier"]
            deadline = time.monotonic() + 120 + 3 * agents
            while True:
                ok = [n for n, (_, v) in _generations(bed.api).items() if ARCHITECTURE in v]
                if len(ok) == agents:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(ok)} of {agents} nodes verified after enrolment")
                time.sleep(0.5)
            watch.start()
            pid = verifier.record.pid
            agent_pids = [bed.cluster.processes[f"agent-{n.name}"].record.pid for n in nodes]
            control_plane = [
                bed.cluster.processes[p].record.pid for p in ("kube-apiserver", "etcd")
            ]
            server_ms: list[float] = []
            rates: list[float] = []
            cpu_ms: list[float] = []
            busy: list[float] = []
            for _ in range(bursts):
                # Hold the verifier while every agent answers its outstanding nonce: then all
                # N pieces of evidence are waiting for it at once.
                os.kill(pid, signal.SIGSTOP)
                try:
                    until = time.monotonic() + 30
                    while True:
                        state = _pending(bed.api)
                        if len(state) == agents and all(g > o for g, o in state.values()):
                            break
                        if time.monotonic() > until:
                            raise RuntimeError(f"agents did not all answer: {state}")
                        time.sleep(0.1)
                    target = {n: g for n, (g, _) in state.items()}
                    if hold_agents:
                        for p in agent_pids:
                            os.kill(p, signal.SIGSTOP)
                    c0, _ = testbed.process_usage(pid)
                    s0 = sum(testbed.process_usage(p)[0] for p in control_plane)
                    m0 = _machine_busy()
                    with watch.changed:
                        mark = len(watch.history)
                    t0 = time.perf_counter()
                finally:
                    os.kill(pid, signal.SIGCONT)
                try:
                    done = watch.wait(
                        lambda w, t=target, m=mark: _drained(w.history[m:], t),
                        60,
                        "the verifier to consume every node's evidence",
                    )
                    c1, _ = testbed.process_usage(pid)
                    s1 = sum(testbed.process_usage(p)[0] for p in control_plane)
                    m1 = _machine_busy()
                finally:
                    if hold_agents:
                        for p in agent_pids:
                            os.kill(p, signal.SIGCONT)
                rates.append(agents / (done - t0))
                cpu_ms.append((c1 - c0) * 1000 / agents)
                server_ms.append((s1 - s0) * 1000 / agents)
                busy.append(100 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9))
                lost = [n for n, (_, v) in _generations(bed.api).items() if ARCHITECTURE not in v]
                if lost:
                    raise RuntimeError(f"nodes lost their verdict under load: {lost}")
        finally:
            watch.stop()
    return rates, cpu_ms, sorted(busy)[len(busy) // 2], sorted(server_ms)[len(server_ms) // 2]


def _drained(events: list[tuple[float, tuple[str, str], Any]], target: dict[str, int]) -> float:
    """When the last node's consumed generation reached its target (0.0: not yet)."""
    reached: dict[str, float] = {}
    for t, (_, name), obj in events:
        gen = int(((obj.get("status") or {}).get("evidence") or {}).get("observedGeneration") or 0)
        if name in target and name not in reached and gen >= target[name]:
            reached[name] = t
    return max(reached.values()) if len(reached) == len(target) else 0.0


def _machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))
