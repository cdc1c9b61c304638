"""`sod-node-agent`: one per node; produces attestation evidence into its NodeAttestation.

    sod-node-agent --node NODE --tcti device:/dev/tpmrm0 [--pcrs sha256:0-7] [--interval 10]
                   [--ek-type auto|rsa|ecc] [--namespace sod-system]
                   [--challenges sod-attestation-challenges]
                   [--simulated-state FILE | --architecture NAME] [--kubeconfig FILE]
                   [--event-log /sys/kernel/security/tpm0/binary_bios_measurements]

Loop: watch the node's NodeAttestation and the verifier's published nonces (a ConfigMap);
when a new nonce is published (paced by `--interval`), the claims change, or the verifier
issued an enrollment challenge, collect the claims, quote over
`qualifying_data(nonce, claims)` and replace the spec (`sod_node_agent.schedule`). Errors are
logged and retried; the agent never exits on a transient failure, and it never judges its own
evidence. Settings can come from the environment as well (NODE_NAME, SOD_TCTI, SOD_EK_TYPE,
SOD_PCRS, SOD_INTERVAL_SECONDS, SOD_SIMULATED_STATE, SOD_EVENT_LOG, SOD_NAMESPACE,
SOD_CHALLENGES_CONFIGMAP) for a DaemonSet. Each quote carries the boot event log
(`--event-log`; `--event-log ''` sends none).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sod_operator.api.v1alpha1.nodeattestation import (
    CHALLENGES_CONFIGMAP,
    TRUST_NAMESPACE,
    NodeAttestationStatus,
    claims_digest,
)
from sod_operator.kube import KubeClient

from sod_node_agent import facts, tpm
from sod_node_agent.evidence import produce, read_event_log
from sod_node_agent.publish import Publisher
from sod_node_agent.schedule import AgentState, plan

log = logging.getLogger("sod_node_agent")
ERROR_BACKOFF_SECONDS = 2.0
DEFAULT_EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="sod-node-agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--node", default=env("NODE_NAME"), help="this node's name (env NODE_NAME)")
    p.add_argument(
        "--tcti",
        default=env("SOD_TCTI", "device:/dev/tpmrm0"),
        help="TPM connection, e.g. device:/dev/tpmrm0 or swtpm:path=SOCKET",
    )
    p.add_argument(
        "--ek-type",
        choices=tpm.EK_TYPES,
        default=env("SOD_EK_TYPE", "auto"),
        help="endorsement key: rsa (NV 0x01c00002), ecc (P-256, NV 0x01c0000a), or auto: the "
        "one the TPM has a certificate for, RSA when it has both",
    )
    p.add_argument(
        "--pcrs",
        default=env("SOD_PCRS", "sha256:0-7"),
        help="PCR selection to quote, e.g. sha256:0-7 or sha256:0,4,7",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=float(env("SOD_INTERVAL_SECONDS", "10")),
        help="seconds between answers to successive nonces (a claims change is reported at once)",
    )
    p.add_argument(
        "--namespace",
        default=env("SOD_NAMESPACE", TRUST_NAMESPACE),
        help="the verifier's namespace, where it publishes its nonces",
    )
    p.add_argument(
        "--challenges",
        default=env("SOD_CHALLENGES_CONFIGMAP", CHALLENGES_CONFIGMAP),
        help="the ConfigMap the verifier publishes its nonces in",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=0.5,
        help="seconds between checks of the claims (a change is reported at once)",
    )
    p.add_argument(
        "--simulated-state",
        type=Path,
        default=env("SOD_SIMULATED_STATE"),
        help="JSON state of the simulated-architecture source (tests, demos)",
    )
    p.add_argument(
        "--architecture",
        default=env("SOD_ARCHITECTURE"),
        help="an architecture this node declares by configuration",
    )
    p.add_argument(
        "--event-log",
        default=env("SOD_EVENT_LOG", DEFAULT_EVENT_LOG),
        help="the binary TCG boot event log sent with each quote ('' for none)",
    )
    p.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig of the agent's identity (default: in-cluster)",
    )
    p.add_argument("--cpuinfo", type=Path, default=Path("/proc/cpuinfo"), help=argparse.SUPPRESS)
    p.add_argument("--sys-module", type=Path, default=Path("/sys/module"), help=argparse.SUPPRESS)
    p.add_argument("--log-level", default=env("SOD_LOG_LEVEL", "INFO"))
    return p  # fmt: skip


class Agent:
    def __init__(self, args: argparse.Namespace, publisher: Publisher) -> None:
        self.args = args
        self.publisher = publisher
        self.selection = tpm.PcrSelection.parse(args.pcrs)
        self.sources = facts.FactSources(
            cpuinfo=args.cpuinfo,
            sys_module=args.sys_module,
            simulated=args.simulated_state,
            architecture=args.architecture,
        )
        self.event_log = Path(args.event_log) if args.event_log else None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            flushed = tpm.flush_leftovers(self.args.tcti)
            if flushed:
                log.info("flushed %d handles a previous run left in the TPM", flushed)
        except Exception as err:  # not fatal: the TPM may be busy or absent for now
            log.warning("could not flush leftover TPM handles: %s", err)
        existing = self.publisher.latest()
        state = AgentState.from_spec(existing.spec if existing else None)
        while not self.stopping.is_set():
            try:
                state, wait = self.once(state)
            except Exception as err:
                log.error("round failed: %s: %s", type(err).__name__, err)
                wait = ERROR_BACKOFF_SECONDS
            self.publisher.changed.wait(min(wait, self.args.poll))
            self.publisher.changed.clear()

    def once(self, state: AgentState) -> tuple[AgentState, float]:
        obj = self.publisher.latest()
        status = obj.status if obj is not None else NodeAttestationStatus()
        newest = self.publisher.challenges().newest
        claims = facts.collect(self.sources)
        claims_hex = claims_digest(claims).hex()
        now = time.monotonic()
        decision = plan(
            exists=obj is not None,
            has_identity=obj is not None and obj.spec.tpm is not None,
            status=status,
            newest=newest.nonce if newest is not None else None,
            state=state,
            claims_hex=claims_hex,
            now=now,
            interval=self.args.interval,
        )
        if not decision.publish:
            return state, decision.wait_seconds
        started = time.perf_counter()
        with tpm.session(self.args.tcti, ek_type=self.args.ek_type) as session:
            produced = produce(
                session,
                claims,
                self.selection,
                status,
                obj.spec if obj is not None else None,
                decision.quote_nonce,
                decision.activate,
                lambda: read_event_log(self.event_log),
            )
        tpm_ms = (time.perf_counter() - started) * 1000
        self.publisher.write(produced.spec, obj)
        state = state.answered(decision.quote_nonce, claims_hex, now)
        if decision.activate and status.enrollment and status.enrollment.credential_blob:
            state = state.activated(status.enrollment.credential_blob)
        log.info(
            "published evidence (%s; nonce %s; tpm %.1f ms)",
            decision.why,
            (decision.quote_nonce or "-")[:12],
            tpm_ms,
        )
        return state, 0.0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.node:
        log.error("--node (or NODE_NAME) is required")
        return 2
    try:
        tpm.PcrSelection.parse(args.pcrs)
    except ValueError as err:
        log.error("%s", err)
        return 2
    os.environ.setdefault("TSS2_LOG", "all+none")  # ESYS logs expected misses as errors
    client = KubeClient(args.kubeconfig, user_agent="sod-node-agent")
    publisher = Publisher(client, args.node, args.namespace, args.challenges)
    agent = Agent(args, publisher)

    def _stop(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        agent.stopping.set()
        publisher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    threading.Thread(target=publisher.watch_forever, name="watch", daemon=True).start()
    log.info(
        "sod-node-agent for node %s, TPM %s, PCRs %s, nonces from configmap %s/%s",
        args.node, args.tcti, args.pcrs, args.namespace, args.challenges,
    )  # fmt: skip
    agent.run()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
