"""Offline `sodctl` commands: `matrix`, `table` and `match`, on manifests in files.

sodctl matrix examples/securevm-vm-b.yaml
sodctl table --profiles examples/profiles
sodctl match examples/securevm-vm-b.yaml --profiles examples/profiles -o json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sod_operator.api.v1alpha1.parsing import ParsedObject
from sod_operator.api.v1alpha1.securevm import SecureVMSpec
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.cli import render
from sod_operator.cli.errors import UsageError
from sod_operator.cli.manifests import load_objects, load_packages, load_profiles
from sod_operator.policy.matching import match_all
from sod_operator.policy.request import (
    RequestError,
    SecurityRequest,
    resolve_package,
    resolve_request,
)

REQUEST_KINDS = ("SecureVM", "SecurityPackage")


def _requests(path: Path, packages_dir: Path | None) -> list[tuple[str, SecurityRequest]]:
    objects = load_objects(path, REQUEST_KINDS)
    packages = (
        load_packages(packages_dir)
        if any(isinstance(o.spec, SecureVMSpec) and o.spec.security.package for o in objects)
        else {}
    )
    return [(o.display_name, _resolve(path, o, packages)) for o in objects]


def _resolve(
    path: Path, obj: ParsedObject, packages: dict[str, SecurityPackageSpec]
) -> SecurityRequest:
    try:
        if isinstance(obj.spec, SecurityPackageSpec):
            return resolve_package(obj.spec, obj.name)
        assert isinstance(obj.spec, SecureVMSpec)
        return resolve_request(obj.spec.security, packages)
    except RequestError as err:
        raise UsageError(f"{path}: {obj.kind} {obj.display_name}: {err}") from None


def cmd_matrix(args: argparse.Namespace) -> int:
    rows = _requests(args.file, args.packages)
    if args.output == "json":
        print(
            json.dumps(
                [
                    {
                        "secureVM": name,
                        "matrix": [r.model_dump(mode="json", by_alias=True) for r in req.rows()],
                        "scope": req.scope.value,
                    }
                    for name, req in rows
                ],
                indent=2,
            )
        )
    else:
        print(render.table_ii(rows))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.profiles)
    if args.output == "json":
        print(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "scope": p.scope.value,
                        "cost": p.cost,
                        **(
                            {"vmRequirements": p.vm.describe()}
                            if p.vm.describe() != "no VM settings"
                            else {}
                        ),
                        "cells": {
                            f"{e}/{prop}": c.value for (e, prop), c in sorted(p.cells.items())
                        },
                    }
                    for p in profiles
                ],
                indent=2,
            )
        )
    else:
        print(render.table_iii(profiles))
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    profiles = load_profiles(args.profiles)
    results = [
        (name, req, match_all(req, profiles)) for name, req in _requests(args.file, args.packages)
    ]
    if args.output == "json":
        docs = [render.match_json(n, r, m) for n, r, m in results]
        print(json.dumps(docs[0] if len(docs) == 1 else {"items": docs}, indent=2))
    else:
        print("\n\n".join(render.match_report(n, r, m) for n, r, m in results))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    packages_help = "directory of SecurityPackage manifests (default: the examples' packages)"
    p = sub.add_parser("matrix", help="print the Security Request Matrix (Table II row) of a file")
    p.add_argument("file", type=Path, help="a SecureVM or SecurityPackage manifest")
    p.add_argument("--packages", type=Path, help=packages_help)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("table", help="print Table III (server security capabilities) of profiles")
    p.add_argument("--profiles", type=Path, required=True, help="directory of profile manifests")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("match", help="which profiles satisfy a request, and what the others lack")
    p.add_argument("file", type=Path, help="a SecureVM or SecurityPackage manifest")
    p.add_argument("--profiles", type=Path, required=True, help="directory of profile manifests")
    p.add_argument("--packages", type=Path, help=packages_help)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_match)
