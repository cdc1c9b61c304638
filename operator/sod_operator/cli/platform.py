"""`sodctl platform-enrollment`: the PlatformEnrollment of one machine, from its EK, offline.

sodctl platform-enrollment hyperwall-7 --architecture hyperwall ek-cert.pem | kubectl apply -f -

The platform team runs it at provisioning with the EK certificate (or EK public key) read on
the machine itself or taken from the vendor's delivery records; what it prints is the object
only cluster admins may create (docs/ATTESTATION.md, "Enrolling machines").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from sod_operator.api.constants import API_VERSION
from sod_operator.api.v1alpha1.platformenrollment import PlatformEnrollmentSpec
from sod_operator.attestation import platform
from sod_operator.cli.errors import UsageError


def cmd_platform_enrollment(args: argparse.Namespace) -> int:
    try:
        data = args.ek.read_bytes()
    except OSError as err:
        raise UsageError(f"{args.ek}: {err.strerror or err}") from None
    try:
        fingerprint = platform.ek_fingerprint_of(data)
    except ValueError as err:
        raise UsageError(f"{args.ek}: {err}") from None
    try:
        spec = PlatformEnrollmentSpec(
            architecture=args.architecture,
            ek_public_key_sha256=fingerprint,
            description=args.description,
        )
    except ValueError as err:
        raise UsageError(f"--architecture {args.architecture!r}: not a valid name") from err
    doc = {
        "apiVersion": API_VERSION,
        "kind": "PlatformEnrollment",
        "metadata": {"name": args.name},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "platform-enrollment",
        help="print the PlatformEnrollment that enrolls a machine's EK for its architecture",
    )
    p.add_argument("name", help="the object's name: the machine's name or asset tag")
    p.add_argument("ek", type=Path, help="the EK certificate or EK public key, PEM or DER")
    p.add_argument("--architecture", required=True, help="e.g. hyperwall (plain for none)")
    p.add_argument("--description", default=None, help="free text, e.g. the rack position")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=cmd_platform_enrollment)
