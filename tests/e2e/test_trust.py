"""The trust monitor on the real local control plane, with a real swtpm and agent per node.

Covers, through the real apiserver (RBAC, ValidatingAdmissionPolicy, /status subresource):
nodes enroll and get `profile.<name>=verified` labels only from the verifier, an ECC-EK
node too (and its evidence refused with an RSA EK certificate claimed for it); a node going
verified → revoked → verified for a memory violation, an unexpected PCR measurement (healed
by a reboot) and a silent agent (stale evidence); a compromised agent's forged signature,
different AK, a quote over a nonce never published, an older quote sent again after newer
evidence (the TPM clock) and tampered PCR value each rejected with its reason and the
node's labels removed; an agent writing another node's attestation, labelling its node,
writing the verdict or deleting evidence refused by the apiserver; tenants unable to read or
write attestations; nobody but the verifier able to set trust labels, and the verifier
unable to touch anything else on a Node. Prints quote + verify latency per node.
Not covered: the operator reacting to labels (its own e2e module).
"""

from __future__ import annotations

import base64
import json
import re
import statistics
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sod_node_agent import facts
from sod_node_agent import tpm as agent_tpm
from sod_node_agent.evidence import produce
from sod_operator.api.constants import profile_label
from sod_operator.api.v1alpha1.attestation_policy import MeasuredBootPolicy
from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_CONFIGMAP,
    CHALLENGES_KEY,
    ChallengeList,
    NodeAttestation,
)
from sod_operator.api.v1alpha1.nodeattestation import AttestationReason as R
from sod_operator.attestation import ekcert, eventlog, measuredboot
from sod_operator.attestation import tpm as tpm_structs
from sod_operator.attestation.ekcert import CaBundle
from sod_operator.cli.main import main as sodctl
from sod_operator.verifier import rbac
from sod_testbed import swtpm
from sod_testbed.cluster import LocalCluster
from sod_testbed.kubeapi import ApiError, JsonObj, KubeApi, resource_path
from sod_testbed.nodes import PLAIN, NodeSpec
from sod_testbed.trust import TrustBed, TrustConfig, token_kubeconfig

from tests.e2e.harness import newest_verified, wait_for
from tests.reliability.figures import record, reliability
from tests.unit.attestation.golden import GOLDEN_PCRS

NATT = "sod.dev/v1alpha1"
HYPERWALL, DATASAFE, TPM = "e2e-hyperwall", "e2e-datasafe", "e2e-tpm"
BOOT = "e2e-measured-boot"
FRESHNESS = 10
WAIT = 45.0
NODES = ("hyperwall-1", "hyperwall-2", "datasafe-1", "plain-1", "plain-2")


def _profile(name: str, attestation: JsonObj) -> JsonObj:
    return {
        "apiVersion": NATT,
        "kind": "ServerSecurityProfile",
        "metadata": {"name": name},
        "spec": {"scope": "FullVM", "protections": [], "attestation": attestation},
    }


ARCHITECTURES = ("hyperwall", "datasafe", "plain")
"""Each boots its own firmware and hypervisor (swtpm.boot_log)."""
BOOT_REFERENCE = measuredboot.reference_state(
    [eventlog.parse(swtpm.boot_log_bytes(a)) for a in ARCHITECTURES], [0, 4, 7]
).model_dump(mode="json", by_alias=True)


def _golden(*architectures: str) -> JsonObj:
    values = [swtpm.golden_pcrs(a) for a in architectures]
    return {
        "pcrBank": "SHA256",
        "pcrs": [{"index": i, "values": sorted({v[i] for v in values})} for i in values[0]],
    }


GOLDEN = _golden("hyperwall")
PROFILES = [
    _profile(
        HYPERWALL,
        {
            "architecture": "hyperwall",
            "tpm": GOLDEN,
            "freshnessSeconds": FRESHNESS,
            "runtime": [{"counter": "memoryViolations", "max": 0}],
        },
    ),
    _profile(
        DATASAFE,
        {"architecture": "datasafe", "tpm": _golden("datasafe"), "freshnessSeconds": FRESHNESS},
    ),
    # No architecture: the golden values of every architecture's boot chain (as during a
    # rollout), so the quote is checked on every node.
    _profile(TPM, {"tpm": _golden(*ARCHITECTURES), "freshnessSeconds": FRESHNESS}),
    # The reference state of the event logs of every architecture's firmware (what
    # `sodctl reference-state` makes from one node's log of each; test_measured_boot_* checks).
    _profile(BOOT, {"measuredBoot": BOOT_REFERENCE, "freshnessSeconds": FRESHNESS}),
]
EXPECTED = {
    "hyperwall-1": {HYPERWALL, TPM, BOOT},
    "hyperwall-2": {HYPERWALL, TPM, BOOT},
    "datasafe-1": {DATASAFE, TPM, BOOT},
    "plain-1": {TPM, BOOT},
    "plain-2": {TPM, BOOT},
    "plain-ecc-1": {TPM, BOOT},  # created by the `ecc_node` fixture for its tests only
}


@pytest.fixture(scope="module")
def bed(sandbox: LocalCluster, kube_api: KubeApi) -> Iterator[TrustBed]:
    """The trust monitor on the session's nodes: swtpm + agent each, one verifier."""
    trust = TrustBed(sandbox, TrustConfig(agent_interval=1.0, verifier_resync=10.0))
    trust.install()
    for p in PROFILES:
        kube_api.apply(
            resource_path(NATT, "serversecurityprofiles", name=p["metadata"]["name"]), p, "e2e"
        )
    for node in sandbox.nodes:
        trust.start_node(node)
    trust.start_verifier()
    yield trust
    for name in [n for n in sandbox.processes if n.split("-", 1)[0] in ("agent", "swtpm")]:
        sandbox.processes.pop(name).stop()
    sandbox.processes.pop("verifier").stop()
    for p in PROFILES:
        kube_api.delete(resource_path(NATT, "serversecurityprofiles", name=p["metadata"]["name"]))
    # Leave the shared cluster as we found it: no evidence, no trust labels, no policies.
    for name in NODES:
        kube_api.delete(resource_path(NATT, "nodeattestations", name=name))
        labels = _labels(kube_api, name)
        patch = {k: None for k in labels if k.startswith("sod.node-restriction.kubernetes.io/")}
        if patch:
            kube_api.merge_patch(
                resource_path("v1", "nodes", name=name), {"metadata": {"labels": patch}}
            )
    for obj in reversed(rbac.policy_manifests(trust.config.namespace)):
        api_version = "admissionregistration.k8s.io/v1"
        plural = obj["kind"].lower() + "s"
        kube_api.delete(resource_path(api_version, plural, name=obj["metadata"]["name"]))
    (trust.dir / "installed").unlink(missing_ok=True)


# --------------------------------------------------------------------------- helpers


def _labels(api: KubeApi, node: str) -> dict[str, str]:
    return dict(api.get(resource_path("v1", "nodes", name=node))["metadata"].get("labels") or {})


def _verified_labels(api: KubeApi, node: str) -> set[str]:
    prefix = profile_label("")
    return {
        k[len(prefix) :]
        for k, v in _labels(api, node).items()
        if k.startswith(prefix) and v == "verified"
    }


def _natt(api: KubeApi, node: str) -> JsonObj:
    return api.get(resource_path(NATT, "nodeattestations", name=node))


def _judged_since(api: KubeApi, node: str, before: JsonObj) -> bool:
    """Evidence newer than the `before` status verified since: written to the status (it
    said something new), or renewed in the fleet's renewals ConfigMap (it said the same)."""
    tpm = next(v for v in before["verdicts"] if v["profile"] == TPM)
    when = newest_verified(api, node, TPM)
    return when is not None and when > datetime.fromisoformat(tpm["evidenceTime"])


def _verdict(att: JsonObj, profile: str) -> tuple[str, str]:
    for v in (att.get("status") or {}).get("verdicts") or []:
        if v["profile"] == profile:
            return v["result"], v["reason"]
    return "Missing", ""


def wait_verified(api: KubeApi, node: str, profiles: set[str] | None = None) -> None:
    want = EXPECTED[node] if profiles is None else profiles
    wait_for(
        lambda: _verified_labels(api, node),
        lambda got: want <= got,
        f"{node} to carry verified labels {sorted(want)}",
        WAIT,
    )


def wait_rejected(api: KubeApi, node: str, profile: str, reason: str) -> JsonObj:
    att = wait_for(
        lambda: _natt(api, node),
        lambda a: _verdict(a, profile) == ("Rejected", reason),
        f"{node}: {profile} rejected with {reason}",
        WAIT,
    )
    wait_for(
        lambda: _verified_labels(api, node),
        lambda got: profile not in got,
        f"{node}: label of {profile} removed",
        WAIT,
    )
    return att


def _events(api: KubeApi, name: str, kind: str, reason: str) -> list[JsonObj]:
    items = api.get(resource_path("v1", "events", namespace="default"))["items"]
    return [
        e
        for e in items
        if e["involvedObject"]["name"] == name
        and e["involvedObject"]["kind"] == kind
        and e["reason"] == reason
    ]


def _forbidden(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == 403, info.value
    return info.value


@pytest.fixture
def broken(bed: TrustBed, kube_api: KubeApi) -> Iterator[Callable[[str, str], None]]:
    """Break a node with `TrustBed.break_node`; heal it afterwards even if the test fails."""
    taken: list[str] = []

    def take(node: str, how: str) -> None:
        wait_verified(kube_api, node)
        taken.append(node)
        bed.break_node(node, how)

    yield take
    for node in taken:
        bed.heal_node(node)
        wait_verified(kube_api, node)


@pytest.fixture
def compromised(bed: TrustBed, kube_api: KubeApi) -> Iterator[Callable[[str], KubeApi]]:
    """Stop a node's agent (the attacker owns the node now); restore it afterwards."""
    taken: list[str] = []

    def take(node: str) -> KubeApi:
        wait_verified(kube_api, node)
        bed.stop_agent(node)
        taken.append(node)
        return KubeApi(bed.kubeconfig_for(f"agent-{node}"), user_agent="attacker")

    yield take
    for node in taken:
        bed.heal_node(node)
        wait_verified(kube_api, node)


def _newest_nonce(bed: TrustBed) -> str:
    """The newest nonce the verifier published (every agent may read it, an attacker too)."""
    path = resource_path("v1", "configmaps", bed.config.namespace, CHALLENGES_CONFIGMAP)
    raw = KubeApi(bed.cluster.kubeconfig).get(path)["data"][CHALLENGES_KEY]
    newest = ChallengeList.model_validate_json(raw).newest
    assert newest is not None
    return newest.nonce


def _evidence(
    bed: TrustBed, node: str, att: JsonObj, ak_unique: bytes = b"", nonce: str | None = None
) -> JsonObj:
    """Real evidence over the newest published nonce (or `nonce`), made with the node's TPM
    (as an attacker can)."""
    model = NodeAttestation.from_object(att)
    with agent_tpm.session(bed.swtpm_for(node).tcti, ak_unique) as session:
        spec = produce(
            session,
            facts.collect(facts.FactSources(simulated=bed.sim_state(node))),
            agent_tpm.PcrSelection.parse(bed.config.pcrs),
            model.status,
            model.spec,
            nonce or _newest_nonce(bed),
            False,
        ).spec
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def _write_spec(api: KubeApi, node: str, spec: JsonObj, current: JsonObj) -> JsonObj:
    """Replace the spec as the node's agent does; retried on 409 (the verifier may have written
    status in between), as an attacker would."""
    path = resource_path(NATT, "nodeattestations", name=node)
    for _ in range(5):
        body = {
            "apiVersion": NATT,
            "kind": "NodeAttestation",
            "metadata": {"name": node, "resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": spec,
        }
        try:
            return api.request("PUT", path, body=body)
        except ApiError as err:
            if err.status != 409:
                raise
            current = api.get(path)
    raise AssertionError(f"could not write {node}'s spec: conflicts")


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------- verified


def test_every_node_is_enrolled_and_labelled_by_attestation(
    bed: TrustBed, kube_api: KubeApi
) -> None:
    for node in NODES:
        wait_verified(kube_api, node)
        att = _natt(kube_api, node)
        conditions = {c["type"]: (c["status"], c["reason"]) for c in att["status"]["conditions"]}
        assert conditions == {"Enrolled": ("True", "Enrolled"), "Ready": ("True", "Verified")}
        assert att["status"]["enrollment"]["state"] == "Enrolled"
        assert set(att["status"]["verifiedProfiles"]) >= EXPECTED[node]
        # The platform team's word, from the TPM itself: the node's EK, enrolled for its hardware.
        enrolled = kube_api.get(resource_path(NATT, "platformenrollments", name=node))["spec"]
        assert enrolled == {
            "architecture": node.rsplit("-", 1)[0],
            "ekPublicKeySha256": bed.ek_fingerprint(node),
            "description": "sod sandbox: enrolled when its TPM was manufactured",
        }
    assert _verdict(_natt(kube_api, "plain-1"), HYPERWALL) == ("Rejected", R.ARCHITECTURE_MISMATCH)
    assert HYPERWALL not in _verified_labels(kube_api, "datasafe-1")
    assert _events(kube_api, "hyperwall-1", "Node", "ProfileVerified")


ECC_NODE = "plain-ecc-1"


@pytest.fixture(scope="module")
def ecc_node(bed: TrustBed, sandbox: LocalCluster, kube_api: KubeApi) -> Iterator[str]:
    """One more node whose swtpm has only an ECC P-256 EK (`--nodes plain=1:ecc`).

    Module-scoped: the agent's token is bound to the Node object, so a node deleted and
    created again under the same name would need a new agent identity.
    """
    spec = NodeSpec(name=ECC_NODE, architecture=PLAIN, tpm="ecc")
    sandbox.create_nodes([spec])
    try:
        bed.start_node(spec)
        yield ECC_NODE
    finally:
        for name in (f"agent-{ECC_NODE}", f"swtpm-{ECC_NODE}"):
            proc = sandbox.processes.pop(name, None)
            if proc is not None:
                proc.stop()
        kube_api.delete(resource_path(NATT, "nodeattestations", name=ECC_NODE))
        kube_api.delete(resource_path("v1", "nodes", name=ECC_NODE))
        sandbox.nodes.remove(spec)


def test_an_ecc_ek_node_enrolls_and_verifies(
    bed: TrustBed, kube_api: KubeApi, ecc_node: str
) -> None:
    wait_verified(kube_api, ecc_node)
    att = _natt(kube_api, ecc_node)
    assert att["status"]["enrollment"]["state"] == "Enrolled"
    tpm_spec = att["spec"]["tpm"]
    ek = tpm_structs.parse_tpm2b_public(base64.b64decode(tpm_spec["ekPublic"]))
    assert tpm_structs.key_kind(ek) == "ECC secp256r1"
    # The certificate the agent read from NV 0x01c0000a chains to the verifier's CA bundle.
    cert = ekcert.parse_certificate(base64.b64decode(tpm_spec["ekCertificate"]))
    bundle = CaBundle.from_pem(bed.ca.bundle_pem())
    assert ekcert.chain_problem(cert, bundle, datetime.now(UTC)) is None
    assert ekcert.key_mismatch(cert, ek.public_key) is None
    signature = tpm_structs.parse_signature(base64.b64decode(tpm_spec["quote"]["signature"]))
    assert signature.alg == tpm_structs.Alg.ECDSA


def test_an_rsa_ek_certificate_with_the_ecc_ek_is_refused(
    bed: TrustBed, kube_api: KubeApi, ecc_node: str, compromised: Callable[[str], KubeApi]
) -> None:
    """A compromised ECC node claims a genuine RSA EK certificate (another node's) as its own.

    The attacker rewrites the published evidence. Evidence failing the identity check is not
    consumed; a nonce its quote answers is still spent and replaced, so an agent restarted on
    such a spec is not left waiting (tests/unit/attestation/test_monitor.py).
    """
    wait_verified(kube_api, ecc_node, {TPM})
    attacker = compromised(ecc_node)
    current = _natt(kube_api, ecc_node)
    spec = current["spec"]
    spec["tpm"]["ekCertificate"] = _natt(kube_api, "plain-1")["spec"]["tpm"]["ekCertificate"]
    _write_spec(attacker, ecc_node, spec, current)
    att = wait_rejected(kube_api, ecc_node, TPM, R.EK_PUBLIC_MISMATCH)
    message = next(v["message"] for v in att["status"]["verdicts"] if v["profile"] == TPM)
    assert "the certificate holds an RSA-2048 key, the EK public is ECC secp256r1" in message


# ------------------------------------------------------------- verified → revoked → verified


def test_memory_violation_revokes_and_heal_restores(
    bed: TrustBed, kube_api: KubeApi, broken: Callable[[str, str], None]
) -> None:
    node = "hyperwall-2"
    broken(node, "violation")
    att = wait_rejected(kube_api, node, HYPERWALL, R.RUNTIME_THRESHOLD_EXCEEDED)
    assert _verdict(att, TPM) == ("Verified", R.VERIFIED)  # the TPM evidence itself is fine
    assert _events(kube_api, node, "NodeAttestation", "ProfileRevoked")
    assert _events(kube_api, node, "Node", "ProfileRevoked")
    bed.heal_node(node)
    wait_verified(kube_api, node)


def test_unexpected_measurement_revokes_until_a_reboot(
    bed: TrustBed, kube_api: KubeApi, broken: Callable[[str, str], None]
) -> None:
    node = "hyperwall-1"
    broken(node, "pcr")
    att = wait_rejected(kube_api, node, HYPERWALL, R.PCR_VALUE_MISMATCH)
    message = next(v["message"] for v in att["status"]["verdicts"] if v["profile"] == HYPERWALL)
    assert "PCR 4" in message
    wait_rejected(kube_api, node, TPM, R.PCR_VALUE_MISMATCH)
    # Extended but not logged: the event log no longer reproduces the quote.
    wait_rejected(kube_api, node, BOOT, R.EVENT_LOG_MISMATCH)
    assert "rebooted (swtpm restarted, boot log measured again)" in bed.heal_node(node)
    wait_verified(kube_api, node)


def test_measured_boot_reference_state_is_what_sodctl_makes_from_a_nodes_log(
    bed: TrustBed, kube_api: KubeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = ("hyperwall-1", "datasafe-1", "plain-1")
    for node in nodes:
        wait_verified(kube_api, node)
    logs = [str(bed.event_log(node)) for node in nodes]
    argv = ["reference-state", *logs, "--pcrs", "0,4,7", "-o", "json"]
    assert sodctl(argv) == 0
    made = json.loads(capsys.readouterr().out)["measuredBoot"]
    assert MeasuredBootPolicy.model_validate(made) == MeasuredBootPolicy.model_validate(
        BOOT_REFERENCE
    )


def test_an_unexpected_boot_component_is_named_until_a_reboot(
    bed: TrustBed, kube_api: KubeApi, broken: Callable[[str, str], None]
) -> None:
    node = "plain-2"
    broken(node, "bootloader")
    att = wait_rejected(kube_api, node, BOOT, R.EVENT_NOT_ALLOWED)
    message = next(v["message"] for v in att["status"]["verdicts"] if v["profile"] == BOOT)
    assert "event #5 (PCR 4 EV_EFI_BOOT_SERVICES_APPLICATION '\\EFI\\sod\\bootkit.efi')" in message
    assert _verdict(att, TPM) == ("Rejected", R.PCR_VALUE_MISMATCH)  # golden values agree
    wait_for(  # the Node's Event says why, naming the event
        lambda: _events(kube_api, node, "Node", "ProfileRevoked"),
        lambda events: any("bootkit.efi" in e["message"] for e in events),
        f"{node}: a ProfileRevoked Event naming bootkit.efi",
        WAIT,
    )
    assert "rebooted (swtpm restarted, boot log measured again)" in bed.heal_node(node)
    wait_verified(kube_api, node)


@reliability("6")
def test_a_silent_agent_is_revoked_when_its_evidence_goes_stale(
    bed: TrustBed, kube_api: KubeApi, broken: Callable[[str, str], None]
) -> None:
    node = "datasafe-1"
    broken(node, "silence")
    att = wait_rejected(kube_api, node, DATASAFE, R.EVIDENCE_STALE)
    wait_rejected(kube_api, node, TPM, R.EVIDENCE_STALE)
    # Profiles with a longer freshnessSeconds (e.g. the examples' 60 s) may still hold.
    assert _verified_labels(kube_api, node) & EXPECTED[node] == set()
    assert "freshnessSeconds=10" in next(
        v["message"] for v in att["status"]["verdicts"] if v["profile"] == DATASAFE
    )
    assert "node-agent started" in bed.heal_node(node)
    wait_verified(kube_api, node)
    record(
        "6",
        "a silent agent (evidence left to go stale)",
        1,
        "revoked: EvidenceStale, trust labels removed",
    )


def test_restarting_the_verifier_and_an_agent_loses_and_duplicates_nothing(
    bed: TrustBed, sandbox: LocalCluster, kube_api: KubeApi
) -> None:
    node = "plain-2"
    wait_verified(kube_api, node)
    before = _natt(kube_api, node)["status"]
    enrolled_events = len(_events(kube_api, node, "NodeAttestation", "NodeEnrolled"))
    sandbox.processes["verifier"].stop()
    bed.start_verifier()
    bed.stop_agent(node)
    bed.start_agent(node)
    wait_for(
        lambda: _judged_since(kube_api, node, before),
        bool,
        "new evidence verified after both restarts (written, or renewed for the fleet)",
        WAIT,
    )
    after = _natt(kube_api, node)["status"]
    assert after["enrollment"] == before["enrollment"]  # same AK, no re-enrollment
    assert _verified_labels(kube_api, node) >= EXPECTED[node]
    assert len(_events(kube_api, node, "NodeAttestation", "NodeEnrolled")) == enrolled_events
    tpm = next(v for v in after["verdicts"] if v["profile"] == TPM)
    first = next(v for v in before["verdicts"] if v["profile"] == TPM)
    assert tpm["lastTransitionTime"] == first["lastTransitionTime"]  # never flapped


# --------------------------------------------------------------------------- a compromised agent


@reliability("6")
def test_forged_signature(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    node = "hyperwall-1"
    attacker = compromised(node)
    current = _natt(kube_api, node)
    spec = _evidence(bed, node, current)
    spec["tpm"]["quote"]["signature"] = _flip(spec["tpm"]["quote"]["signature"], 30)
    _write_spec(attacker, node, spec, current)
    wait_rejected(kube_api, node, HYPERWALL, R.QUOTE_SIGNATURE_INVALID)
    assert _verified_labels(kube_api, node) == set()
    record(
        "6",
        "forged quote signature (one bit flipped)",
        1,
        "rejected: QuoteSignatureInvalid, labels removed",
    )


@reliability("6")
def test_a_different_ak(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    node = "hyperwall-1"
    attacker = compromised(node)
    current = _natt(kube_api, node)
    _write_spec(attacker, node, _evidence(bed, node, current, ak_unique=b"attacker's AK"), current)
    att = wait_rejected(kube_api, node, TPM, R.AK_NOT_ENROLLED)
    assert att["status"]["enrollment"]["state"] == "Enrolled"  # the pinned AK did not change
    assert _verified_labels(kube_api, node) == set()
    record(
        "6",
        "quote by a different AK than the enrolled one",
        1,
        "rejected: AkNotEnrolled, the pinned AK unchanged, labels removed",
    )


@reliability("6")
def test_a_quote_over_a_nonce_never_published(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    node = "hyperwall-2"
    attacker = compromised(node)
    current = _natt(kube_api, node)
    made_up = "ab" * 32  # e.g. a quote made in advance, to be sent once the node is compromised
    _write_spec(attacker, node, _evidence(bed, node, current, nonce=made_up), current)
    att = wait_rejected(kube_api, node, HYPERWALL, R.NONCE_MISMATCH)
    assert _verdict(att, TPM) == ("Rejected", R.NONCE_MISMATCH)
    assert _verified_labels(kube_api, node) == set()
    record(
        "6",
        "quote over a nonce the verifier never published (made in advance)",
        1,
        "rejected: NonceMismatch, labels removed",
    )


@reliability("6")
def test_an_older_quote_sent_again_after_newer_evidence(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    """Nonces are shared and stay listed for the freshness bound, so an older genuine quote
    still answers a listed nonce: its TPM clock is what gives it away."""
    node = "hyperwall-2"
    attacker = compromised(node)
    current = _natt(kube_api, node)
    good = _evidence(bed, node, current)  # genuine evidence of the healthy node, kept back
    bed.break_node(node, "violation")
    current = _natt(kube_api, node)
    _write_spec(attacker, node, _evidence(bed, node, current), current)  # the truth, reported
    wait_rejected(kube_api, node, HYPERWALL, R.RUNTIME_THRESHOLD_EXCEEDED)
    _write_spec(attacker, node, good, _natt(kube_api, node))  # ... then undone with the old
    att = wait_rejected(kube_api, node, HYPERWALL, R.QUOTE_REPLAYED)
    assert _verdict(att, TPM) == ("Rejected", R.QUOTE_REPLAYED)
    assert _verified_labels(kube_api, node) == set()
    record(
        "6",
        "replayed evidence (an older genuine quote, its nonce still listed, after a violation)",
        1,
        "rejected: QuoteReplayed, labels removed",
    )


@reliability("6")
def test_a_tampered_pcr_value(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    node = "hyperwall-1"
    attacker = compromised(node)
    bed.break_node(node, "pcr")  # the node really runs an unexpected module ...
    current = _natt(kube_api, node)
    spec = _evidence(bed, node, current)
    for pcr in spec["tpm"]["quote"]["pcrs"]:
        if pcr["index"] == 4:
            pcr["value"] = GOLDEN_PCRS[4]  # ... and reports the golden value instead
    _write_spec(attacker, node, spec, current)
    wait_rejected(kube_api, node, HYPERWALL, R.PCR_DIGEST_MISMATCH)
    assert _verified_labels(kube_api, node) == set()
    record(
        "6",
        "PCR value replaced by the golden one after quoting",
        1,
        "rejected: PcrDigestMismatch, labels removed",
    )


@reliability("6")
def test_altered_claims(
    bed: TrustBed, kube_api: KubeApi, compromised: Callable[[str], KubeApi]
) -> None:
    node = "hyperwall-2"
    attacker = compromised(node)
    bed.break_node(node, "violation")
    current = _natt(kube_api, node)
    spec = _evidence(bed, node, current)
    for counter in spec["claims"]["counters"]:
        counter["value"] = 0  # hide the violation after the TPM signed the quote
    _write_spec(attacker, node, spec, current)
    wait_rejected(kube_api, node, HYPERWALL, R.QUALIFYING_DATA_MISMATCH)
    record(
        "6",
        "runtime claims altered after quoting (violations hidden)",
        1,
        "rejected: QualifyingDataMismatch",
    )


# --------------------------------------------------------------------------- the apiserver's rules


@reliability("5")
def test_an_agent_cannot_write_another_nodes_attestation(bed: TrustBed) -> None:
    agent = KubeApi(bed.kubeconfig_for("agent-hyperwall-1"))
    other = resource_path(NATT, "nodeattestations", name="datasafe-1")
    assert agent.get(other)["spec"]["tpm"]  # reading public evidence is allowed
    # No resourceVersion precondition: the live agent's writes must not turn this into a 409.
    forged = {"spec": {"claims": {"architecture": "hyperwall"}}}
    err = _forbidden(lambda: agent.merge_patch(other, forged))
    assert "may write only the NodeAttestation of its own node" in err.message
    assert "hyperwall-1" in err.message
    _forbidden(
        lambda: agent.create(
            resource_path(NATT, "nodeattestations"),
            {
                "apiVersion": NATT,
                "kind": "NodeAttestation",
                "metadata": {"name": "plain-2-twin"},
                "spec": {},
            },
        )
    )
    record(
        "5",
        "node-agent writes another node's NodeAttestation (patch, create)",
        2,
        "refused 403 by the admission policy (own node only)",
    )


@reliability("5")
def test_an_agent_cannot_label_its_node(bed: TrustBed) -> None:
    agent = KubeApi(bed.kubeconfig_for("agent-hyperwall-1"))
    patch = {"metadata": {"labels": {profile_label("datasafe"): "verified"}}}
    err = _forbidden(
        lambda: agent.merge_patch(resource_path("v1", "nodes", name="hyperwall-1"), patch)
    )
    assert 'cannot patch resource "nodes"' in err.message
    record(
        "5",
        "node-agent labels its own node with a trust label",
        1,
        "refused 403 (RBAC: no patch on nodes)",
    )


@reliability("5")
def test_an_agent_cannot_write_the_verdict_or_delete_evidence(bed: TrustBed) -> None:
    agent = KubeApi(bed.kubeconfig_for("agent-plain-1"))
    path = resource_path(NATT, "nodeattestations", name="plain-1")
    own = agent.get(path)
    own["status"]["verifiedProfiles"] = [HYPERWALL]
    err = _forbidden(lambda: agent.request("PUT", path + "/status", body=own))
    assert "nodeattestations/status" in err.message
    _forbidden(lambda: agent.delete(path))
    record("5", "node-agent writes its verdict (/status) or deletes its evidence", 2, "refused 403")


@reliability("5")
def test_an_agent_token_without_a_node_binding_is_refused(
    bed: TrustBed, sandbox: LocalCluster
) -> None:
    unbound = token_kubeconfig(
        bed.dir / "identities" / "agent-unbound.kubeconfig",
        sandbox.server,
        sandbox.pki.ca.cert.read_bytes(),
        "agent-unbound",
        bed.token(rbac.AGENT_SA),
    )
    agent = KubeApi(unbound)
    path = resource_path(NATT, "nodeattestations", name="plain-2")
    # No resourceVersion precondition: the live agent's writes must not turn this into a 409.
    err = _forbidden(lambda: agent.merge_patch(path, {"spec": {"claims": {"cpuFlags": []}}}))
    assert "carries no node name" in err.message
    record("5", "node-agent token not bound to a node", 1, "refused 403: carries no node name")


RBAC = "rbac.authorization.k8s.io/v1"


def _sa_client(sandbox: LocalCluster, kube_api: KubeApi, namespace: str, sa: str) -> KubeApi:
    """A client authenticated as ServiceAccount `sa` (created if needed)."""
    kube_api.apply(
        resource_path("v1", "serviceaccounts", namespace=namespace, name=sa),
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": namespace},
        },
        "e2e",
    )
    token = kube_api.create(
        resource_path("v1", "serviceaccounts", namespace=namespace, name=sa, subresource="token"),
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )["status"]["token"]
    path = sandbox.state_dir / "identities" / f"{namespace}-{sa}.kubeconfig"
    ca = sandbox.pki.ca.cert.read_bytes()
    return KubeApi(token_kubeconfig(path, sandbox.server, ca, sa, token))


def _bind(kube_api: KubeApi, kind: str, role: str, namespace: str, sa: str) -> None:
    """Bind ClusterRole `role` to `sa`: in `namespace` (RoleBinding) or cluster-wide."""
    plural = "rolebindings" if kind == "RoleBinding" else "clusterrolebindings"
    name = f"e2e-{namespace}-{sa}-{role}"
    meta: JsonObj = {"name": name}
    if kind == "RoleBinding":
        meta["namespace"] = namespace
    kube_api.apply(
        resource_path(RBAC, plural, namespace=meta.get("namespace"), name=name),
        {
            "apiVersion": RBAC,
            "kind": kind,
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
        "e2e",
    )


@reliability("5")
def test_tenants_cannot_read_or_write_attestations(
    bed: TrustBed, sandbox: LocalCluster, kube_api: KubeApi, namespace: str
) -> None:
    del bed
    for role in ("admin", "edit", "view"):
        _bind(kube_api, "RoleBinding", role, namespace, "tenant")
    _bind(kube_api, "ClusterRoleBinding", "view", namespace, "viewer")
    tenant = _sa_client(sandbox, kube_api, namespace, "tenant")
    viewer = _sa_client(sandbox, kube_api, namespace, "viewer")
    collection = resource_path(NATT, "nodeattestations")
    wait_for(
        lambda: tenant.list(resource_path("v1", "pods", namespace=namespace)),
        bool,
        "the tenant's RoleBindings to take effect",
        10,
    )
    for who in (tenant, viewer):
        _forbidden(lambda who=who: who.get(collection))  # type: ignore[misc]
        _forbidden(lambda who=who: who.get(collection + "/hyperwall-1"))  # type: ignore[misc]
    body = {
        "apiVersion": NATT,
        "kind": "NodeAttestation",
        "metadata": {"name": "hyperwall-1"},
        "spec": {},
    }
    _forbidden(lambda: tenant.create(collection, body))
    _forbidden(lambda: tenant.merge_patch(collection + "/hyperwall-1", {"spec": {}}))
    kube_api.delete(resource_path(RBAC, "clusterrolebindings", name=f"e2e-{namespace}-viewer-view"))
    record(
        "5",
        "tenant (admin/edit/view, cluster view) reads or writes NodeAttestations",
        6,
        "refused 403",
    )


@reliability("5")
def test_only_the_verifier_sets_trust_labels(
    bed: TrustBed, sandbox: LocalCluster, kube_api: KubeApi
) -> None:
    # An identity that may patch nodes (e.g. some other controller) still cannot mint trust.
    ns = bed.config.namespace
    role = {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": {"name": "e2e-node-labeler"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
    }
    kube_api.apply(resource_path(RBAC, "clusterroles", name="e2e-node-labeler"), role, "e2e")
    _bind(kube_api, "ClusterRoleBinding", "e2e-node-labeler", ns, "node-labeler")
    labeler = _sa_client(sandbox, kube_api, ns, "node-labeler")
    node = resource_path("v1", "nodes", name="plain-1")
    wait_for(lambda: _can_get(labeler, node), bool, "RBAC for the labeler", 10)
    trust_label = {"metadata": {"labels": {profile_label(HYPERWALL): "verified"}}}
    err = _forbidden(lambda: labeler.merge_patch(node, trust_label))
    assert "only the verifier may set or remove labels" in err.message
    labeler.merge_patch(node, {"metadata": {"labels": {"e2e/other": "fine"}}})  # allowed
    # And the verifier itself may touch nothing on a Node but our labels.
    verifier = KubeApi(bed.kubeconfig_for("verifier"))
    other = {"metadata": {"labels": {"e2e/other": "changed"}}}
    err = _forbidden(lambda: verifier.merge_patch(node, other))
    assert "may change only labels under" in err.message
    err = _forbidden(lambda: verifier.merge_patch(node, {"spec": {"unschedulable": True}}))
    assert "may not change a node's spec" in err.message
    kube_api.delete(
        resource_path(RBAC, "clusterrolebindings", name=f"e2e-{ns}-node-labeler-e2e-node-labeler")
    )
    kube_api.delete(resource_path(RBAC, "clusterroles", name="e2e-node-labeler"))
    record(
        "5",
        "an identity allowed to patch nodes sets a trust label; the verifier changes other fields",
        3,
        "refused 403 by the admission policies",
    )


def _can_get(api: KubeApi, path: str) -> bool:
    try:
        api.get(path)
    except ApiError:
        return False
    return True


# --------------------------------------------------------------------------- latency


def test_quote_and_verify_latency(
    bed: TrustBed, sandbox: LocalCluster, kube_api: KubeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    """Printed for the benchmark issue (target ≤ 10 ms per node on swtpm); never asserted."""
    for node in NODES:
        wait_verified(kube_api, node)
    lines = []
    for node in NODES:
        text = sandbox.processes[f"agent-{node}"].log_path.read_text()
        tpm_ms = [float(m) for m in re.findall(r"tpm ([0-9.]+) ms", text)][1:]  # skip enrollment
        lines.append(
            f"  {node:12} agent TPM round median {statistics.median(tpm_ms):6.1f} ms "
            f"(n={len(tpm_ms)})"
        )
    port = int((bed.dir / "verifier-metrics-port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    count = float(re.search(r"^sod_attestation_step_seconds_count (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"^sod_attestation_step_seconds_sum (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    with capsys.disabled():
        print("\n[latency] quote (agent: AK, identity, quote, PCR reads) per node:")
        print("\n".join(lines))
        print(
            f"  verifier step (identity, quote, all profiles): mean {1000 * total / count:.2f} ms "
            f"over {count:.0f} steps"
        )
    assert "sod_attestation_verified_nodes" in metrics
