"""Attestation (issue 7, item 5): quote + verify latency per node on swtpm, and the verifier's
throughput in nodes per second with 8 and 32 concurrent agents.

Latency runs the project's own protocol in-process, without the apiserver in between: the
node-agent's round (`sod_node_agent.tpm.session` + `evidence.produce`: open the TPM, derive the
AK, read and quote the PCRs over the verifier's nonce and the claims) against a real swtpm, then
the verifier's step (`sod_operator.attestation.monitor.step`: EK chain, enrollment, quote
signature, the published nonce, PCR digest, every profile's policy, whether the status needs
writing). The baseline does the same round the usual shell way, with tpm2-tools
(`tpm2_createprimary`, `tpm2_quote`, `tpm2_checkquote`) on the same swtpm: it checks less (no EK
chain, no policy), so the ratio favours the baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
FRESHNESS_SECONDS = 60
"""The latency run's policy freshness bound (the example profiles' too)."""

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
                "freshnessSeconds": FRESHNESS_SECONDS,
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
        from sod_operator.api.v1alpha1.nodeattestation import ChallengeList, NodeAttestation
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
        self.challenges = ChallengeList()
        """The published nonces, as the verifier keeps them (`challenges.rotate`)."""

    def new_nonce(self) -> None:
        """The verifier's rotation for the next round (fleet-wide in a cluster, so not timed
        as part of one node's round): a fresh nonce, older ones kept while still fresh."""
        from sod_operator.attestation import challenges

        now = datetime.now(UTC)
        keep = timedelta(seconds=FRESHNESS_SECONDS)
        rotated = challenges.rotate(self.challenges, now, timedelta(0), keep, os.urandom)
        self.challenges = rotated or self.challenges

    def answered(self) -> Any:
        """The published challenge the node's current quote answers (None: none listed)."""
        quote = self.att.spec.tpm.quote if self.att.spec.tpm is not None else None
        return self.challenges.find(quote.nonce) if quote is not None else None

    def agent_round(self) -> None:
        """What the agent does for one nonce (or enrollment challenge): quote over the newest
        published nonce once enrolled."""
        from sod_node_agent import tpm as agent_tpm
        from sod_node_agent.evidence import produce
        from sod_operator.api.v1alpha1.nodeattestation import EnrollmentState

        status = self.att.status
        enrolled = status.enrollment is not None and (
            status.enrollment.state == EnrollmentState.ENROLLED
        )
        newest = self.challenges.newest
        nonce = newest.nonce if enrolled and newest is not None else None
        previous = self.att.spec if self.att.spec.tpm is not None else None
        with agent_tpm.session(self.tpm.tcti) as session:
            spec = produce(session, self.claims, self.selection, status, previous, nonce, True).spec
        self.att = self.att.model_copy(update={"spec": spec, "generation": self.att.generation + 1})

    def verifier_step(self) -> Any:
        from sod_operator.attestation import monitor

        out = monitor.step(
            monitor.StepInput(
                self.att,
                self.node,
                self.policies,
                datetime.now(UTC),
                enrollments=self.enrollments,
                challenges=self.challenges,
            ),
            self.settings,
            os.urandom,
        )
        self.att = self.att.model_copy(update={"status": out.status})
        return out

    def enroll(self) -> None:
        for _ in range(6):
            self.new_nonce()
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
    return quotecheck.Case(name, ev, node.att.spec.claims, node.answered(), ev.ak_public, True)


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
        node.new_nonce()
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


def _latency(result: Result, workdir: Path, trials: int, base_trials: int) -> dict[str, Any]:
    """The latency figures; returns the node's last NodeAttestation (spec and status, as the
    API holds them) for `_write_costs`."""
    from sod_testbed import swtpm

    ca = swtpm.LocalCa(workdir / "ca")
    node = SimulatedNode(workdir, ca, "node-0")
    try:
        node.enroll()
        agent_ms: list[float] = []
        verify_ms: list[float] = []
        for _ in range(trials + 2):
            node.new_nonce()
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
        sample = {
            part: getattr(node.att, part).model_dump(mode="json", by_alias=True, exclude_none=True)
            for part in ("spec", "status")
        }
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
            label="verifier step: identity, enrollment, quote, policies, write or not",
            unit="ms",
            better="lower",
            samples=verify_ms,
            baseline_label="tpm2_checkquote (signature, nonce, PCR digest only)"
            if cli_verify
            else None,
            baseline_samples=cli_verify or None,
        ),
    ]
    return sample


BEFORE = Path(__file__).parent / "results" / "history" / "67ced2f" / "attestation.json"
"""The run before issue 17 item 3 (cheaper rounds for the API server), archived unchanged."""
_SERVER_NOTE = re.compile(r"kube-apiserver \+ etcd ([0-9.]+) ms")
BEFORE_OF = {"verifier_throughput": "verifier_throughput", "round_throughput": "sandbox_throughput"}
"""After figure (id without the agent count) -> the archived figure it is compared with. The
paused drain with the paused drain (the verifier consuming N answers already written); the
whole round with the old run's drain "with the agents answering meanwhile": the window in
which the old protocol's API server served one round's writes of both sides (the verifier's
status writes carrying the next nonces, the agents' answers to them)."""


def before_figures(doc: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """figure id -> (kube-apiserver + etcd CPU ms per verified quote, median nodes/s) of an
    archived result file. That run printed the CPU only in each throughput figure's note, so it
    is read from there."""
    out: dict[str, tuple[float, float]] = {}
    for fig in doc.get("figures", []):
        found = _SERVER_NOTE.search(fig.get("note") or "")
        if found and fig.get("unit") == "nodes/s":
            out[fig["id"]] = (float(found.group(1)), float(fig["summary"]["median"]))
    return out


def before_id(fid: str) -> str:
    """The archived figure an after figure `fid` is compared with (`BEFORE_OF`)."""
    prefix, _, agents = fid.rpartition("_")
    return f"{BEFORE_OF.get(prefix, prefix)}_{agents}"


def _before_after(result: Result, after: dict[str, tuple[float, float]], quick: bool) -> None:
    """The before/after table of issue 17 item 3: before cited from `BEFORE`, after this run."""
    cite = BEFORE.relative_to(BEFORE.parents[4]).as_posix()
    if not BEFORE.is_file():
        result.not_run["before/after of API CPU per quote"] = f"{cite} is missing"
        return
    doc = json.loads(BEFORE.read_text())
    before = before_figures(doc)
    rows = []
    for fid, (server, rate) in after.items():
        old = before_id(fid)
        if old not in before:
            continue
        b_server, b_rate = before[old]
        rows.append(
            [fid, old, f"{b_server:.2f}", f"{server:.2f}", f"{b_server / max(server, 1e-9):.2f}x",
             f"{b_rate:.1f}", f"{rate:.1f}"]
        )  # fmt: skip
    result.add_table(
        "API-server + etcd CPU per verified quote and verifier throughput: before and after",
        ["after (this run)", "before (archived)", "API CPU before (ms)", "API CPU after (ms)",
         "API CPU cut", "nodes/s before (median)", "nodes/s after (median)"],
        rows,
        note=f"Before: `{cite}` (commit {doc.get('commit', '?')[:7]}, "
        f"{'clean' if doc.get('clean') else 'dirty'} tree, quick={doc.get('quick')}), the "
        "protocol with a per-node nonce in every status write; after: this run "
        f"(quick={quick}), fleet-wide nonces. `verifier_throughput` compares with the same "
        "figure: the verifier draining N answers already written, agents paused (the after "
        "window also holds the round's nonce write and any expiry renewals, see the method). "
        "`round_throughput` (nonce write to the last answer consumed, nothing paused) compares "
        "with `sandbox_throughput`, the old drain with the agents answering the next nonces "
        "meanwhile: both windows hold one round's writes of both sides; their rates time "
        "different spans (the after one includes the agents' quoting). API CPU before: the "
        "median of the bursts (every old burst wrote the same); after: all bursts' CPU over "
        "all their quotes (renewals fall in some bursts only, a median would hide them). Their "
        "machines' load is in each file.",
    )  # fmt: skip


WRITE_OBJECTS = 8
WRITE_WATCHERS = 4


def write_shapes(sample: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Objects of the shapes whose writes `_write_costs` times: shape -> (object body without
    metadata, which part is rewritten). `full` is a real node's NodeAttestation; `record` holds
    only the status's evidence record (what a status write must at least carry); `quote` is
    the agent's per-round evidence alone."""
    status = sample["status"]
    quote = dict((sample["spec"].get("tpm") or {}).get("quote") or {})
    quote.pop("eventLog", None)
    record = {k: status[k] for k in ("evidence",) if k in status}
    return {
        "full object, status write (the verifier's: a verdict change or an expiry renewal)": (
            sample, "status"),
        "full object, spec write (the agent's round)": (sample, "spec"),
        "record-sized object, status write (the evidence record alone)": (
            {"spec": {}, "status": record}, "status"),
        "quote-sized object, spec write": ({"spec": {"tpm": {**_identity(sample),
                                                            "quote": quote}}}, "spec"),
    }  # fmt: skip


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    tpm = sample["spec"].get("tpm") or {}
    # Placeholders of the schema's shape: the apiserver does not decode them.
    return {k: "AA==" for k in ("ekCertificate", "ekPublic", "akPublic") if k in tpm}


def challenges_configmap(
    name: str, namespace: str, challenges: Any, resource_version: str = ""
) -> dict[str, Any]:
    """The challenges ConfigMap as the verifier writes it: the `ChallengeList`'s JSON under
    `CHALLENGES_KEY`; with `resource_version` a precondition (a 409 says another writer)."""
    from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_KEY

    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CHALLENGES_KEY: challenges.model_dump_json(by_alias=True)},
    }


def rotated(current: Any, now: datetime, keep_for: timedelta) -> Any:
    """The next published list, a fresh nonce issued `now` (`challenges.rotate`, due at once:
    the bench decides when a round starts)."""
    from sod_operator.attestation import challenges

    margin = timedelta(seconds=ROUND_SECONDS)  # the verifier's: one interval
    out = challenges.rotate(current, now, timedelta(0), keep_for, os.urandom, margin)
    if out is None:  # interval 0: always due
        raise RuntimeError("challenges.rotate issued no nonce")
    return out


def _write_costs(result: Result, sample: dict[str, Any], rounds: int) -> None:
    """kube-apiserver + etcd CPU of one write by object shape, on a bare control plane (our
    CRDs, no other client): where the API CPU of a round goes."""
    from sod_testbed.cluster import LocalCluster

    rows = []
    state = Path(tempfile.mkdtemp(prefix="sod-bench-att-writes-"))
    cluster = LocalCluster(state, (), kubevirt=False, start_timeout=180.0)
    cluster.start()
    try:
        pids = [cluster.processes[p].record.pid for p in ("kube-apiserver", "etcd")]
        timed = [
            (shape, _time_writes(cluster, pids, body, part, rounds, f"w{i}"))
            for i, (shape, (body, part)) in enumerate(write_shapes(sample).items())
        ]
        timed += [
            (shape, _time_configmap_writes(cluster, pids, rounds, f"w-cm-{i}", data))
            for i, (shape, data) in enumerate(configmap_shapes().items())
        ]
        for i, (shape, (ms, size, managed)) in enumerate(timed):
            rows.append([shape, size, managed, f"{ms:.2f}"])
            result.figures.append(
                Figure(
                    id=f"write_cpu_{i}",
                    label=f"kube-apiserver + etcd CPU per write: {shape}",
                    unit="ms",
                    better="lower",
                    samples=[ms],
                    note=f"{size} B object, {managed} B of it managedFields",
                )
            )
    finally:
        cluster.stop(remove_state=True)
    result.add_table(
        "Where the API CPU of a round goes: one write by object shape",
        ["object and write", "object bytes", "managedFields bytes", "apiserver + etcd ms/write"],
        rows,
        note=f"A bare control plane (kube-apiserver, etcd, our CRDs), {WRITE_OBJECTS} "
        f"NodeAttestations with {WRITE_WATCHERS} watches on them, {rounds} rounds of one "
        "PUT each (a new quote, or a new evidence record, each time), CPU time of both "
        "processes from /proc over all rounds divided by the writes. The full object is the "
        "latency run's node. The challenges ConfigMap: one object with "
        f"{WRITE_WATCHERS} watches, {rounds * WRITE_OBJECTS} PUTs, each the next list "
        f"`challenges.rotate` publishes at {ROUND_SECONDS:.0f} s rounds (nonces kept "
        f"{FRESHNESS_SECONDS} s); it is written once per round for the whole fleet, so per "
        "quote it costs this divided by the nodes. The renewals ConfigMap: the same, each PUT "
        "renewing every node (a `RenewalList` of that many nodes); the verifier writes it "
        "when a renewal is due, for every node at once, so per quote it costs this divided by "
        "the nodes and by the rounds between two writes.",
    )


RENEWAL_NODES = (8, 32, 1000)
"""Fleet sizes whose renewals ConfigMap write is timed (the benched ones, and a larger one)."""


def configmap_shapes() -> dict[str, RoundData]:
    """The ConfigMaps the verifier writes for the whole fleet: shape -> its data per round."""
    shapes = {
        "challenges ConfigMap, update (the verifier's round: one write for the fleet)": (
            challenges_data()
        )
    }
    for n in RENEWAL_NODES:
        shapes[f"renewals ConfigMap, update ({n} nodes renewed: one write for the fleet)"] = (
            renewals_data(n)
        )
    return shapes


def _time_writes(
    cluster: Any, pids: list[int], body: dict[str, Any], part: str, rounds: int, prefix: str
) -> tuple[float, int, int]:
    """(apiserver + etcd CPU ms per write, object bytes, managedFields bytes)."""
    from sod_testbed.kubeapi import resource_path

    from bench import testbed

    plural = resource_path("sod.dev/v1alpha1", "nodeattestations")
    api = cluster.api()
    watches = [testbed.ObjectWatch(cluster.kubeconfig, plural) for _ in range(WRITE_WATCHERS)]
    names = [f"{prefix}-{i}" for i in range(WRITE_OBJECTS)]
    current: dict[str, Any] = {}
    try:
        for w in watches:
            w.start()
        for name in names:
            meta = {"name": name}
            made = api.create(plural, {"apiVersion": "sod.dev/v1alpha1",
                                       "kind": "NodeAttestation", "metadata": meta,
                                       "spec": body.get("spec", {})})  # fmt: skip
            current[name] = _rewrite(api, plural, made, body, "status")
        cpu0 = sum(testbed.process_usage(p)[0] for p in pids)
        for _ in range(rounds):
            for name in names:
                current[name] = _rewrite(api, plural, current[name], body, part)
        cpu1 = sum(testbed.process_usage(p)[0] for p in pids)
        last = current[names[0]]
    finally:
        for w in watches:
            w.stop()
        for name in names:
            api.delete(resource_path("sod.dev/v1alpha1", "nodeattestations", name=name))
    return (cpu1 - cpu0) * 1000 / (rounds * len(names)), *_sizes(last)


def _sizes(obj: dict[str, Any]) -> tuple[int, int]:
    """(object bytes, managedFields bytes) of compact JSON."""
    managed = obj["metadata"].get("managedFields") or []
    return (
        len(json.dumps(obj, separators=(",", ":")).encode()),
        len(json.dumps(managed, separators=(",", ":")).encode()),
    )


RoundData = Callable[[datetime], dict[str, str]]
"""A ConfigMap's data for a round starting at the given time."""


def _time_configmap_writes(
    cluster: Any, pids: list[int], rounds: int, name: str, data: RoundData
) -> tuple[float, int, int]:
    """(apiserver + etcd CPU ms per write, object bytes, managedFields bytes) of a ConfigMap
    the verifier publishes, each update `data` for the next round's time."""
    from sod_testbed.kubeapi import resource_path

    from bench import testbed

    ns = "default"
    collection = resource_path("v1", "configmaps", ns)
    path = resource_path("v1", "configmaps", ns, name=name)
    api = cluster.api()
    watches = [testbed.ObjectWatch(cluster.kubeconfig, collection) for _ in range(WRITE_WATCHERS)]
    step, now = timedelta(seconds=ROUND_SECONDS), datetime.now(UTC)

    def body(rv: str = "") -> dict[str, Any]:
        meta = {"name": name, "namespace": ns, **({"resourceVersion": rv} if rv else {})}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data(now)}

    try:
        for w in watches:
            w.start()
        obj = api.create(collection, body())
        cpu0 = sum(testbed.process_usage(p)[0] for p in pids)
        for _ in range(rounds * WRITE_OBJECTS):
            now += step
            obj = api.replace(path, body(obj["metadata"]["resourceVersion"]))
        cpu1 = sum(testbed.process_usage(p)[0] for p in pids)
    finally:
        for w in watches:
            w.stop()
        api.delete(path)
    return (cpu1 - cpu0) * 1000 / (rounds * WRITE_OBJECTS), *_sizes(obj)


def challenges_data() -> RoundData:
    """The challenges ConfigMap's data round after round, the list at its steady length."""
    from sod_operator.api.v1alpha1.nodeattestation import CHALLENGES_KEY, ChallengeList

    keep, step = timedelta(seconds=FRESHNESS_SECONDS), timedelta(seconds=ROUND_SECONDS)
    current, at = ChallengeList(), datetime.now(UTC) - keep - 2 * step
    while at < datetime.now(UTC):  # to the steady length
        at += step
        current = rotated(current, at, keep)

    def data(now: datetime) -> dict[str, str]:
        nonlocal current
        current = rotated(current, now, keep)
        return {CHALLENGES_KEY: current.model_dump_json(by_alias=True)}

    return data


def renewals_data(nodes: int) -> RoundData:
    """The renewals ConfigMap's data for `nodes` nodes, each renewed at every write."""
    from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_KEY, Renewal, RenewalList

    contents = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(nodes)]

    def data(now: datetime) -> dict[str, str]:
        renewals = {
            f"node-{i:05d}": Renewal(evidence_time=now, content_sha256=c)
            for i, c in enumerate(contents)
        }
        return {RENEWALS_KEY: RenewalList(renewals=renewals).model_dump_json(by_alias=True)}

    return data


def _rewrite(
    api: Any, plural: str, obj: dict[str, Any], body: dict[str, Any], part: str
) -> dict[str, Any]:
    """PUT `part` of `obj` from `body` with something new in it, as the agent (a quote over a
    fresh nonce) or the verifier (a new evidence record) writes it."""
    new = json.loads(json.dumps(body.get(part) or {}))
    nonce = os.urandom(32).hex()
    record = new.get("evidence") if part == "status" else None
    if record:
        record["quoteSha256"] = hashlib.sha256(nonce.encode()).hexdigest()
        if record.get("challenge"):
            record["challenge"]["nonce"] = nonce
    quote = (new.get("tpm") or {}).get("quote") if part == "spec" else None
    if quote:
        quote["nonce"] = nonce
    meta = obj["metadata"]
    out = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
           "metadata": {"name": meta["name"], "resourceVersion": meta["resourceVersion"]},
           "spec": obj.get("spec") or {}, "status": obj.get("status") or {}}  # fmt: skip
    out[part] = new
    path = f"{plural}/{meta['name']}" + ("/status" if part == "status" else "")
    return dict(api.replace(path, out))


ROUND_SECONDS = 10.0
"""The verifier's default `--challenge-interval`: the bench issues a nonce this often."""
HOLD_SECONDS = 3600
"""The verifier's own `--challenge-interval` in the throughput sandbox: it never rotates."""
SCRAPE_LEAD = 0.5
"""Seconds before a round's nonce at which the request counts and the evidence counter are
read (scrapes cost CPU: they stay out of the CPU window)."""
CPU_LEAD = 0.05
"""Seconds before a round's nonce at which its CPU window opens (see the method)."""
SETTLE = 0.05
"""Seconds the verifier runs after a nonce is published before it is held (paused rounds):
its watch delivers the new list within milliseconds on loopback (a miss would show as GETs
of configmaps in the requests table: the verifier reads the list anew for an unknown nonce);
a longer wait only adds the control plane's own background to the round's CPU window."""
POLL = 0.005
WARMUP_ROUNDS = 3
EVIDENCE_METRIC = "sod_attestation_evidence_total"
RENEWALS_DUE_METRIC = "sod_attestation_renewals_due"


class Nonces:
    """The bench's stand-in for the verifier's rotation: `challenges.rotate` with the
    verifier's keep_for and the verifier's ConfigMap write, through the bed's admin client,
    on a fixed grid of `ROUND_SECONDS`. A 409 means another writer (the verifier rotating on
    its own): the run stops."""

    def __init__(self, api: Any, namespace: str, name: str, keep_for: timedelta) -> None:
        from sod_operator.api.v1alpha1.nodeattestation import ChallengeList

        self.api = api
        self.namespace = namespace
        self.name = name
        self.keep_for = keep_for
        self.current = ChallengeList()
        self.version = ""
        self.start = 0.0
        self._slot = 0
        self.late = 0
        """Grid points skipped because a round overran its slot."""

    def publish(self) -> str:
        """Issue the next nonce now; returns it."""
        from sod_testbed.kubeapi import ApiError, resource_path

        new = rotated(self.current, datetime.now(UTC), self.keep_for)
        body = challenges_configmap(self.name, self.namespace, new, self.version)
        try:
            if self.version:
                path = resource_path("v1", "configmaps", namespace=self.namespace, name=self.name)
                obj = self.api.replace(path, body)
            else:
                obj = self.api.create(resource_path("v1", "configmaps", self.namespace), body)
        except ApiError as err:
            if err.conflict:
                raise RuntimeError(
                    "someone else wrote the challenges ConfigMap (the verifier rotating on its "
                    f"own? it must run with a challenge interval of {HOLD_SECONDS} s): {err}"
                ) from err
            raise
        self.current, self.version = new, obj["metadata"]["resourceVersion"]
        if not self.start:
            self.start = time.perf_counter()
        return str(new.challenges[0].nonce)

    def next_slot(self) -> float:
        """The next grid point (perf_counter) at least `SCRAPE_LEAD` ahead."""
        soonest = time.perf_counter() + SCRAPE_LEAD
        k = self._slot + 1
        while self.start + k * ROUND_SECONDS < soonest:
            k += 1
        self.late += k - self._slot - 1
        self._slot = k
        return self.start + k * ROUND_SECONDS


def keep_for(profiles: list[dict[str, Any]], default_seconds: int) -> timedelta:
    """How long the verifier keeps a nonce: the longest `freshnessSeconds` of any profile
    with an attestation policy, else its `--ready-max-age` (as `monitor` judges usefulness)."""
    from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy

    bounds = [
        AttestationPolicy.model_validate(p["spec"]["attestation"]).freshness_seconds
        for p in profiles
        if (p.get("spec") or {}).get("attestation")
    ]
    return timedelta(seconds=max(bounds) if bounds else default_seconds)


def evidence_counts(metrics: str) -> dict[str, float]:
    """reason -> the verifier's `sod_attestation_evidence_total`, from its Prometheus text."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line.startswith(EVIDENCE_METRIC + "{"):
            continue
        labels_text, _, value = line.rpartition("} ")
        reason = dict(re.findall(r'(\w+)="([^"]*)"', labels_text)).get("reason", "")
        out[reason] = out.get(reason, 0.0) + float(value)
    return out


def evidence_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The evidence the verifier counted between two reads, by reason (none: left out)."""
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v > before.get(k, 0.0)}


def renewals_due(metrics: str) -> bool:
    """The verifier's `sod_attestation_renewals_due`: a due renewal not yet written."""
    for line in metrics.splitlines():
        if line.startswith(RENEWALS_DUE_METRIC + " "):
            return float(line.split()[1]) > 0
    return False


class EvidenceCounter:
    """The verifier's evidence counter and whether a renewal write is pending, read from its
    metrics endpoint on loopback."""

    def __init__(self, port: int) -> None:
        query = urllib.parse.urlencode(
            [("name[]", EVIDENCE_METRIC), ("name[]", RENEWALS_DUE_METRIC)]
        )
        self.url = f"http://127.0.0.1:{port}/metrics?{query}"
        self.reads = 0
        self.due = False
        """Whether the last read found a renewal write pending."""

    def read(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            text = resp.read().decode()
        self.reads += 1
        self.due = renewals_due(text)
        return evidence_counts(text)

    def wait_renewed(self, timeout: float) -> None:
        """Until no renewal write is pending: the round's renewals (if due) are written, so the
        round's CPU window holds them."""
        deadline = time.monotonic() + timeout
        while self.due:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the verifier's renewals were not written in {timeout} s")
            time.sleep(POLL)
            self.read()

    def wait_for(self, total: float, timeout: float) -> tuple[float, dict[str, float]]:
        """(perf_counter when the sum over reasons was first seen >= `total`, the counts)."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.read()
            if sum(counts.values()) >= total:
                return time.perf_counter(), counts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the verifier counted {counts}, not {total:.0f}, in {timeout} s"
                )
            time.sleep(POLL)


@dataclass
class Usage:
    """CPU seconds of the processes that matter, and the machine's jiffies, at one moment."""

    verifier: float
    apiserver: float
    etcd: float
    busy: float
    total: float

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, ...]:
        return (self.verifier, self.apiserver, self.etcd, self.busy, self.total)


@dataclass(frozen=True)
class _Pids:
    verifier: int
    agents: list[int]
    apiserver: int
    etcd: int

    def usage(self) -> Usage:
        from bench import testbed

        verifier, apiserver, etcd = (
            testbed.process_usage(p)[0] for p in (self.verifier, self.apiserver, self.etcd)
        )
        return Usage(verifier, apiserver, etcd, *_machine_busy())

    def agents_signal(self, sig: signal.Signals) -> None:
        for p in self.agents:
            os.kill(p, sig)


@dataclass
class Drain:
    """What the bursts of one mode measured (per burst unless said otherwise)."""

    rates: list[float] = field(default_factory=list)
    """Nodes per second."""
    cpu_ms: list[float] = field(default_factory=list)
    """Verifier CPU per verified quote."""
    server_ms: list[float] = field(default_factory=list)
    """kube-apiserver + etcd CPU per verified quote."""
    apiserver_ms: list[float] = field(default_factory=list)
    etcd_ms: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    """Whole machine busy, %."""
    total: Usage = field(default_factory=lambda: Usage(0, 0, 0, 0, 0))
    """The sum of every burst's window."""
    quotes: int = 0
    polls: int = 0
    """Reads of the verifier's counter inside the windows."""

    def add(self, agents: int, seconds: float, used: Usage, polls: int) -> None:
        self.rates.append(agents / seconds)
        self.cpu_ms.append(used.verifier * 1000 / agents)
        self.apiserver_ms.append(used.apiserver * 1000 / agents)
        self.etcd_ms.append(used.etcd * 1000 / agents)
        self.server_ms.append(self.apiserver_ms[-1] + self.etcd_ms[-1])
        self.busy.append(100 * used.busy / max(used.total, 1e-9))
        self.total += used
        self.quotes += agents
        self.polls += polls

    def mean_ms(self) -> tuple[float, float]:
        """(verifier, kube-apiserver + etcd) CPU ms per verified quote over all bursts."""
        t, n = self.total, max(self.quotes, 1)
        return t.verifier * 1000 / n, (t.apiserver + t.etcd) * 1000 / n


@dataclass
class Throughput:
    """One sandbox's run: both modes, and what they share."""

    paused: Drain = field(default_factory=Drain)
    round: Drain = field(default_factory=Drain)
    requests: dict[str, float] = field(default_factory=dict)
    """`verb resource[/subresource]` -> apiserver requests per verified quote over every
    measured round of both modes (from the apiserver's own `apiserver_request_total`)."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes of compact JSON of one NodeAttestation's parts after the last round."""
    poll_ms: float = 0.0
    """Verifier CPU of one read of its counter (measured idle)."""
    late: int = 0


@dataclass
class _Bed:
    api: Any
    pids: _Pids
    counter: EvidenceCounter
    nonces: Nonces
    watch: Any
    agents: int

    def answered(self, nonce: str) -> bool:
        """Every agent's spec quote answers `nonce` (called under the watch's lock)."""
        quotes = [
            ((o.get("spec") or {}).get("tpm") or {}).get("quote") or {}
            for o in self.watch.objects.values()
        ]
        return len(quotes) == self.agents and all(q.get("nonce") == nonce for q in quotes)


def _sleep_until(t: float) -> None:
    left = t - time.perf_counter()
    if left > 0:
        time.sleep(left)


def _counted(before: dict[str, float], after: dict[str, float]) -> None:
    """Every piece of evidence the verifier counted in a round verified (a rejection, e.g. of
    a nonce it had not seen yet, would make the figure something else)."""
    delta = evidence_delta(before, after)
    if set(delta) - {"Verified"}:
        raise RuntimeError(f"the verifier counted evidence that did not verify: {delta}")


def _paused_round(bed: _Bed, slot: float, requests: dict[str, float]) -> tuple[float, Usage, int]:
    """One round with the verifier held while the agents answer, the agents held while it
    drains: (drain seconds, CPU of the round's two verifier windows)."""
    _sleep_until(slot - SCRAPE_LEAD)
    r0, e0 = _request_counts(bed.api), bed.counter.read()
    _sleep_until(slot - CPU_LEAD)
    u0 = bed.pids.usage()
    bed.pids.agents_signal(signal.SIGSTOP)
    try:
        _sleep_until(slot)
        nonce = bed.nonces.publish()
        time.sleep(SETTLE)  # the verifier reads the new list, as it knows its own
        u1 = bed.pids.usage()
        os.kill(bed.pids.verifier, signal.SIGSTOP)
        try:
            bed.pids.agents_signal(signal.SIGCONT)
            bed.watch.wait(lambda w: bed.answered(nonce), 30, "every agent to answer")
            bed.pids.agents_signal(signal.SIGSTOP)
            u2, polls, t0 = bed.pids.usage(), bed.counter.reads, time.perf_counter()
        finally:
            os.kill(bed.pids.verifier, signal.SIGCONT)
        t1, e1 = bed.counter.wait_for(sum(e0.values()) + bed.agents, 60)
        bed.counter.wait_renewed(30)
        u3 = bed.pids.usage()
        polls = bed.counter.reads - polls
    finally:
        bed.pids.agents_signal(signal.SIGCONT)
    _add_requests(requests, r0, _request_counts(bed.api))
    _counted(e0, e1)
    return t1 - t0, (u1 - u0) + (u3 - u2), polls


def _whole_round(bed: _Bed, slot: float, requests: dict[str, float]) -> tuple[float, Usage, int]:
    """One round with nothing held: (seconds from the nonce write until the verifier counted
    every answer, CPU over the round)."""
    _sleep_until(slot - SCRAPE_LEAD)
    r0, e0 = _request_counts(bed.api), bed.counter.read()
    _sleep_until(slot - CPU_LEAD)
    u0 = bed.pids.usage()
    _sleep_until(slot)
    t0 = time.perf_counter()
    nonce = bed.nonces.publish()
    # The counter is polled only once every answer is in (the bench's watch): each read costs
    # the verifier CPU, which the figure counts.
    bed.watch.wait(lambda w: bed.answered(nonce), 30, "every agent to answer")
    polls = bed.counter.reads
    t1, e1 = bed.counter.wait_for(sum(e0.values()) + bed.agents, 60)
    bed.counter.wait_renewed(30)
    u1 = bed.pids.usage()
    polls = bed.counter.reads - polls
    _add_requests(requests, r0, _request_counts(bed.api))
    _counted(e0, e1)
    return t1 - t0, u1 - u0, polls


def _add_requests(
    into: dict[str, float], before: dict[str, float], after: dict[str, float]
) -> None:
    for key, n in after.items():
        into[key] = into.get(key, 0.0) + n - before.get(key, 0.0)


def _throughput(agents: int, bursts: int) -> Throughput:
    """`bursts` paused rounds, then `bursts` whole rounds, on one sandbox (see the method)."""
    from sod_testbed.handler_player import PlayerConfig
    from sod_testbed.kubeapi import resource_path
    from sod_testbed.nodes import parse_nodes

    from bench import testbed

    nodes = parse_nodes(f"{ARCHITECTURE}={agents}")
    with testbed.sandbox(nodes, PlayerConfig(), f"att{agents}") as bed:
        watch = testbed.ObjectWatch(
            bed.cluster.kubeconfig, resource_path("sod.dev/v1alpha1", "nodeattestations")
        )
        try:
            ctx = _start_trust(bed, nodes, watch)
            out = Throughput(poll_ms=_poll_cost(ctx))
            for _ in range(WARMUP_ROUNDS):
                _whole_round(ctx, ctx.nonces.next_slot(), {})
            ctx.nonces.late = 0  # count only the measured rounds' skipped slots
            requests: dict[str, float] = {}
            for drain, one in ((out.paused, _paused_round), (out.round, _whole_round)):
                for _ in range(bursts):
                    seconds, used, polls = one(ctx, ctx.nonces.next_slot(), requests)
                    drain.add(agents, seconds, used, polls)
                    lost = [n for n, v in _verified(bed.api).items() if ARCHITECTURE not in v]
                    if lost:
                        raise RuntimeError(f"nodes lost their verdict under load: {lost}")
            quotes = out.paused.quotes + out.round.quotes
            out.requests = {k: v / quotes for k, v in sorted(requests.items()) if v}
            out.sizes = _object_sizes(bed.api, nodes[0].name)
            out.late = ctx.nonces.late
        finally:
            watch.stop()
    return out


def _start_trust(bed: Any, nodes: list[Any], watch: Any) -> _Bed:
    """The sandbox's trust monitor with the bench issuing the nonces: the first list is
    published before the verifier starts, and one every `ROUND_SECONDS` until every node is
    verified."""
    from sod_testbed.kubeapi import resource_path
    from sod_testbed.trust import TrustBed, TrustConfig

    # Least privilege as in a cluster: node-bound agent tokens, the verifier's own
    # ServiceAccount, the admission policies. --interval 0.5: an agent answers a new nonce at
    # once (the rounds are far longer). The verifier's own rotation held off: the bench issues
    # every nonce.
    config = TrustConfig(agent_interval=0.5, challenge_interval=HOLD_SECONDS)
    trust = TrustBed(bed.cluster, config)
    trust.install()
    profiles = bed.api.list(resource_path("sod.dev/v1alpha1", "serversecurityprofiles"))
    keep = keep_for(profiles.get("items", []), config.ready_max_age)
    nonces = Nonces(bed.api, config.namespace, config.challenges, keep)
    nonces.publish()
    for n in nodes:
        trust.start_node(n)
    port = trust.start_verifier()
    procs = bed.cluster.processes
    pids = _Pids(
        verifier=procs["verifier"].record.pid,
        agents=[procs[f"agent-{n.name}"].record.pid for n in nodes],
        apiserver=procs["kube-apiserver"].record.pid,
        etcd=procs["etcd"].record.pid,
    )
    deadline = time.monotonic() + 120 + 3 * len(nodes)
    while len([v for v in _verified(bed.api).values() if ARCHITECTURE in v]) < len(nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every node verified after enrolment: {_verified(bed.api)}")
        _sleep_until(nonces.next_slot())
        nonces.publish()
    watch.start()
    return _Bed(bed.api, pids, EvidenceCounter(port), nonces, watch, len(nodes))


def _poll_cost(bed: _Bed, reads: int = 100) -> float:
    """Verifier CPU ms of one read of its counter, measured while it is idle."""
    c0 = bed.pids.usage().verifier
    for _ in range(reads):
        bed.counter.read()
        time.sleep(POLL)
    return (bed.pids.usage().verifier - c0) * 1000 / reads


def _verified(api: Any) -> dict[str, list[str]]:
    """name -> the verified profiles of every NodeAttestation."""
    from sod_testbed.kubeapi import resource_path

    items = api.list(resource_path("sod.dev/v1alpha1", "nodeattestations")).get("items", [])
    return {
        o["metadata"]["name"]: list((o.get("status") or {}).get("verifiedProfiles") or [])
        for o in items
    }


CORES = len(os.sched_getaffinity(0))


def ceiling(cores: int, verifier_ms: float, server_ms: float) -> float:
    """Nodes per second `cores` could verify if the verifier, kube-apiserver and etcd had them
    to themselves, at the measured CPU per verified quote: the bound the throughput meets."""
    return cores * 1000 / max(verifier_ms + server_ms, 1e-9)


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _request_counts(api: Any) -> dict[str, float]:
    """`verb resource[/subresource]` -> the apiserver's `apiserver_request_total` (writes and
    reads of our objects, Nodes, Events, Leases and ConfigMaps; watches excluded)."""
    return request_counts(api.get_text("/metrics"))


def request_counts(metrics: str) -> dict[str, float]:
    """Sum `apiserver_request_total` of a Prometheus text exposition by verb and resource."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition("} ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
        if labels.get("verb") in ("WATCH", "CONNECT") or labels.get("resource") not in (
            "nodeattestations", "nodes", "events", "leases", "configmaps",
        ):  # fmt: skip
            continue
        key = f"{labels['verb']} {labels['resource']}"
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _object_sizes(api: Any, name: str) -> dict[str, int]:
    from sod_testbed.kubeapi import resource_path

    obj = api.get(resource_path("sod.dev/v1alpha1", "nodeattestations", name=name))
    return object_sizes(obj)


def object_sizes(obj: dict[str, Any]) -> dict[str, int]:
    """Bytes of compact JSON of a stored object, whole and by part (managedFields, spec,
    status, and the spec's event log): what every write of it re-encodes and stores."""
    meta = obj.get("metadata") or {}
    quote = ((obj.get("spec") or {}).get("tpm") or {}).get("quote") or {}

    def size(x: Any) -> int:
        return len(json.dumps(x, separators=(",", ":")).encode())

    return {
        "object": size(obj),
        "metadata.managedFields": size(meta.get("managedFields") or []),
        "spec": size(obj.get("spec") or {}),
        "spec.tpm.quote.eventLog": len(quote.get("eventLog") or ""),
        "status": size(obj.get("status") or {}),
    }


def _machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


MODES = (
    ("verifier_throughput", "", "verifier drains N answers, agents paused"),
    ("round_throughput", "round_", "whole round: nonce write to the last answer consumed"),
)


def _mode_figures(agents: int, prefix: str, drain: Drain) -> list[Figure]:
    what = "agents paused" if not prefix else "whole round, nothing paused"
    return [
        Figure(
            id=f"{prefix}verifier_cpu_per_node_{agents}",
            label=f"verifier CPU per verified quote, {agents} agents ({what})",
            unit="ms",
            better="lower",
            samples=drain.cpu_ms,
        ),
        Figure(
            id=f"{prefix}apiserver_cpu_per_node_{agents}",
            label=f"kube-apiserver + etcd CPU per verified quote, {agents} agents ({what})",
            unit="ms",
            better="lower",
            samples=drain.server_ms,
            note=f"of which kube-apiserver {_median(drain.apiserver_ms):.2f} ms, etcd "
            f"{_median(drain.etcd_ms):.2f} ms (medians); all bursts' CPU over all their "
            f"quotes: {drain.mean_ms()[1]:.2f} ms",
        ),
    ]


def _throughput_figure(agents: int, fid: str, what: str, drain: Drain, poll_ms: float) -> Figure:
    cpu, server = drain.mean_ms()
    return Figure(
        id=fid,
        label=f"verifier throughput, {agents} concurrent agents ({what})",
        unit="nodes/s",
        better="higher",
        samples=drain.rates,
        targets=[Target("median", ">=", 200.0)] if fid.startswith("verifier_") else [],
        note=f"CPU per verified quote (all bursts' CPU over all their quotes): verifier "
        f"{cpu:.2f} ms ({1000 / max(cpu, 1e-9):.0f} nodes/s per core), kube-apiserver + etcd "
        f"{server:.2f} ms; the whole machine was busy {_median(drain.busy):.0f} % (median) "
        f"in the windows. At these costs {CORES} cores doing nothing else verify at most "
        f"{ceiling(CORES, cpu, server):.0f} nodes/s. The verifier's CPU includes the bench's "
        f"reads of its counter: {drain.polls / max(drain.quotes, 1):.1f} per quote, "
        f"{poll_ms:.3f} ms each (measured idle).",
    )


def _where_table(result: Result, agents: int, run_: Throughput) -> None:
    """Where the API CPU per quote goes: the requests it serves per quote, the object's size."""
    rows: list[list[Any]] = [[k, f"{v:.3f}", "requests per verified quote"] for k, v in
                             run_.requests.items()]  # fmt: skip
    rows += [[k, v, "bytes (compact JSON)"] for k, v in run_.sizes.items()]
    result.add_table(
        f"Where the API-server CPU per quote goes, {agents} agents (every measured round)",
        ["what", "value", "unit"],
        rows,
        note="Requests: the apiserver's `apiserver_request_total` (watches excluded) from "
        f"{SCRAPE_LEAD} s before each measured round's nonce until the verifier had counted "
        "every answer and written any renewal due, both modes, divided by the quotes "
        "verified: the ConfigMap writes (`PUT configmaps`: the bench's challenges, one per "
        "round, and the verifier's renewals, one per round in which some renewal was due), "
        "the agents' answers (`PUT nodeattestations`), the verifier's status writes (verdict "
        "changes, and expiry renewals only if the renewals ConfigMap could not be written) "
        "and the rest of the sandbox meanwhile (Leases, Nodes). Sizes: one "
        "NodeAttestation after the last round; every write re-encodes, validates and stores "
        "the whole object and computes its managedFields.",
    )


def run(quick: bool = False) -> Result:
    trials = 20 if quick else 100
    base_trials = 5 if quick else 20
    result = Result(name=NAME, title=TITLE)
    result.params = {"trials": trials, "baseline_trials": base_trials, "pcrs": PCRS}
    result.method = f"""\
**Quote + verify latency.** One swtpm ({PCRS}, booted with the sandbox's simulated boot log),
enrolled once by the project's own credential-activation protocol. One trial = one nonce
(published by `sod_operator.attestation.challenges.rotate`, untimed: one rotation serves the
whole fleet): the node-agent's round (`sod_node_agent.tpm.session` + `evidence.produce`: open
the TPM, derive the AK, read and quote the PCRs over H(nonce || claims)) and the verifier's step
(`sod_operator.attestation.monitor.step`: EK chain to the CA bundle, enrollment, quote signature,
the published nonce, the TPM clock against replay, PCR digest, the golden-PCR and
runtime-counter policies, whether the status needs writing), in-process, so the apiserver
round trips are not in this figure (they are in the throughput figure). Every
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
        sample = _latency(result, workdir, trials, base_trials)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    why = deps.reason(VERIFIER_MODULES, testbed=True)
    if why:
        result.not_run["verifier throughput with 8 and 32 concurrent agents"] = why
        return result
    _write_costs(result, sample, rounds=10 if quick else 40)
    bursts = 5 if quick else 12
    result.params.update({"throughput_bursts": bursts, "round_seconds": ROUND_SECONDS})
    if quick:
        result.not_run["verifier throughput with 32 concurrent agents"] = "skipped in --quick"
    after: dict[str, tuple[float, float]] = {}
    for agents in (8,) if quick else (8, 32):
        run_ = _throughput(agents, bursts)
        for (stem, prefix, what), drain in zip(MODES, (run_.paused, run_.round), strict=True):
            fid = f"{stem}_{agents}"
            after[fid] = (drain.mean_ms()[1], _median(drain.rates))
            result.figures.append(_throughput_figure(agents, fid, what, drain, run_.poll_ms))
            result.figures += _mode_figures(agents, prefix, drain)
        _where_table(result, agents, run_)
        if run_.late:
            result.notes.append(
                f"{agents} agents: {run_.late} round slot(s) of {ROUND_SECONDS:.0f} s were "
                "skipped because a round overran its slot (the next nonce came later)."
            )
    _before_after(result, after, quick)
    result.method += THROUGHPUT_METHOD.format(
        arch=ARCHITECTURE, bursts=bursts, round=ROUND_SECONDS, hold=HOLD_SECONDS,
        settle=SETTLE, lead=CPU_LEAD, poll=POLL * 1000, warmup=WARMUP_ROUNDS,
        tick=1000 / os.sysconf("SC_CLK_TCK"),
    )  # fmt: skip
    return result


THROUGHPUT_METHOD = """
**Verifier throughput.** A sandbox with N = 8, then 32 kwok nodes and the sandbox's trust
monitor (`sod_testbed.trust`): per node a swtpm and a `sod-node-agent` process with a
ServiceAccount token bound to its Node, one `sod-verifier run` process with its own
ServiceAccount, and the trust monitor's RBAC and admission policies, as in a cluster. The
verifier runs `--workers 4` (the chart's default) and a challenge interval of {hold} s, so it
never issues a nonce itself: the bench issues every round's nonce, with the verifier's code
(`sod_operator.attestation.challenges.rotate`, nonces kept as long as the longest profile
`freshnessSeconds`) and the verifier's write (the challenges ConfigMap in its namespace,
created, then replaced with its resourceVersion as precondition), through the bed's admin
client instead of the verifier's: same write, same code, another client. Rounds start on a
fixed grid of {round:.0f} s, the verifier's default interval, so its expiry renewals (one write
of the renewals ConfigMap for every node, by the first round once half of a verdict's
lifetime is spent, as soon as that round's answers are all judged) fall into the rounds as
often as in a cluster; each round's window lasts until that write is done (the verifier's
`sod_attestation_renewals_due` is back to 0). After every node is verified for `{arch}` and {warmup}
unmeasured rounds, {bursts} rounds of each mode follow, the paused ones first. The verifier's
counter `sod_attestation_evidence_total` (summed over reasons; read from its metrics endpoint
on loopback every {poll:.0f} ms) says when it has consumed the round's N answers; every counted
answer of a round must have verified, and no node may lose its verdict, or the run stops.

*Paused (`verifier_throughput`, the headline).* The agents are held (SIGSTOP) {lead} s before
the nonce; the bench writes it; the verifier runs {settle} s more (it learns the new list, as
it knows a list it writes itself), then is held
(SIGSTOP); the agents are released until every one's spec quote answers the new nonce (a
watch on NodeAttestations), then held again; the verifier is released (SIGCONT) and drains:
nodes/s = N / the time from its release until its counter reached N more (the renewals write,
when due, follows; it is in the CPU window, not in the rate). As their nodes would
be other machines, the agents are held while the verifier works, so the verifier,
kube-apiserver and etcd share the two cores. CPU per verified quote (each process's CPU time
from /proc, in {tick:.0f} ms ticks: one burst's figure is coarse, all bursts' together less
so): over both windows of the round in which the verifier ran (from {lead} s before the nonce
write until the verifier was held, and the drain), so it holds the nonce write, the
verifier's renewals and its drain, but not the agents' answers, as the archived run's drain
held the verifier's per-node status writes (with the next nonce) but not the answers.

*Whole round (`round_throughput`).* Nothing is held: from the bench's nonce write until the
verifier's counter reached N more (the agents see the nonce, quote on their swtpms and write
their answers; the verifier consumes them), on the same two cores; the counter is polled only
once the bench's watch has seen every answer (each read costs the verifier CPU). Its API CPU
per quote (from {lead} s before the write) holds the nonce write, the agents' N answers and
any renewals write: one round's whole cost to the API server.

The CPU per quote reported with each rate is all bursts' CPU over all their quotes (renewals
fall in some rounds only); the per-burst figures follow it. The ceiling of two cores can be
read off, with the apiserver requests served per quote and the object's size; the
before/after table cites the archived run `67ced2f` (issue 17 item 3). No baseline: no peer
verifier service (Keylime's verifier with its agents) ran on this bed, and a rate derived from
a latency is not a measurement; Keylime's own quote check is measured on the same quotes above
(`quote_checks_per_second`), in process on one core, without the apiserver.
"""
