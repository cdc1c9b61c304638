"""`sodctl eventlog` and `sodctl reference-state`: boot event logs, offline.

sodctl eventlog /sys/kernel/security/tpm0/binary_bios_measurements
sodctl eventlog node-1.log -o json        # {"pcrs": {"sha256": {"0": "<hex>"}}, "events": [...]}
sodctl reference-state good-1.log good-2.log --pcrs 0,2,4,7 --require-secure-boot

The first prints a log's events and its replayed PCR values per bank; the second turns the
logs of known-good nodes into the `spec.attestation.measuredBoot` of a profile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from sod_operator.api.v1alpha1.attestation_policy import PcrBank
from sod_operator.attestation import eventlog, measuredboot
from sod_operator.attestation.eventlog import EventLog, EventLogError
from sod_operator.cli.errors import UsageError


def _load(path: Path) -> EventLog:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    try:
        return eventlog.parse(data)
    except EventLogError as err:
        raise UsageError(f"{path}: not a TCG event log: {err}") from None


def _describe(ev: eventlog.Event) -> str:
    label = ev.label()
    prefix = f"event #{ev.number} (PCR {ev.pcr} {ev.type_name}"
    return label.removeprefix(prefix).removesuffix(")").strip()


def render_text(log: EventLog) -> str:
    fmt = "crypto-agile" if log.crypto_agile else "SHA1 legacy"
    lines = [f"{fmt} event log, banks: {', '.join(log.banks)}, {len(log.events)} events", ""]
    bank = "sha256" if "sha256" in log.banks else log.banks[0]
    for ev in log.events:
        digest = ev.digests.get(bank, b"").hex()[:16]
        pcr = str(ev.pcr) if ev.pcr <= eventlog.MAX_PCR else "-"
        lines.append(
            f"{ev.number:>4}  PCR {pcr:>2}  {ev.type_name:<34} {bank}:{digest:<16}  "
            f"{_describe(ev)}".rstrip()
        )
    for name, pcrs in log.replay().items():
        lines += ["", f"PCRs ({name}):"]
        lines += [f"  {i:>2}: {v.hex()}" for i, v in pcrs.items()]
    return "\n".join(lines)


def cmd_eventlog(args: argparse.Namespace) -> int:
    log = _load(args.file)
    if args.output == "json":
        print(json.dumps(eventlog.to_json(log), indent=2))
    else:
        print(render_text(log))
    return 0


def _pcr_list(text: str) -> list[int]:
    try:
        pcrs = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated PCR list") from None
    if not pcrs or any(not 0 <= p <= eventlog.MAX_PCR for p in pcrs):
        raise argparse.ArgumentTypeError(f"PCRs must be 0-{eventlog.MAX_PCR}, got {text!r}")
    return pcrs


def cmd_reference_state(args: argparse.Namespace) -> int:
    logs = [_load(p) for p in args.files]
    try:
        policy = measuredboot.reference_state(
            logs, args.pcrs, PcrBank(args.bank), args.require_secure_boot
        )
    except (measuredboot.ReferenceStateError, ValueError) as err:
        raise UsageError(f"{', '.join(map(str, args.files))}: {err}") from None
    doc = {"measuredBoot": policy.model_dump(mode="json", by_alias=True)}
    for ref in doc["measuredBoot"]["references"]:
        if not ref["variable"]:
            del ref["variable"]  # the default: not a UEFI variable event
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"# spec.attestation of a ServerSecurityProfile: the reference state of "
            f"{len(logs)} known-good event log(s), PCRs {args.pcrs}"
        )
        print(yaml.safe_dump(doc, sort_keys=False, width=100), end="")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eventlog", help="print a binary TCG boot event log's events and replayed PCRs"
    )
    p.add_argument(
        "file", type=Path, help="e.g. /sys/kernel/security/tpm0/binary_bios_measurements"
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_eventlog)

    p = sub.add_parser(
        "reference-state",
        help="turn known-good nodes' event logs into a profile's measured-boot reference state",
    )
    p.add_argument("files", type=Path, nargs="+", help="binary TCG event logs of good nodes")
    p.add_argument(
        "--pcrs",
        type=_pcr_list,
        default=[0, 2, 4, 7],
        help="PCRs whose every event must match (default 0,2,4,7: firmware, option ROMs, "
        "boot loaders and kernel, Secure Boot)",
    )
    p.add_argument("--bank", choices=[b.value for b in PcrBank], default=PcrBank.SHA256.value)
    p.add_argument(
        "--require-secure-boot",
        action="store_true",
        help="also require Secure Boot enabled (every log must show it)",
    )
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=cmd_reference_state)
