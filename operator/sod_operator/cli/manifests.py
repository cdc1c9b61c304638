"""Reading our kinds from YAML files and directories for the offline `sodctl` commands.

Every problem becomes a one-line `UsageError` naming the file, the object and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sod_operator.api.v1alpha1.parsing import ManifestError, ParsedObject, parse_object
from sod_operator.api.v1alpha1.profile import ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.security import SecurityPackageSpec
from sod_operator.cli.errors import UsageError
from sod_operator.policy.matching import ProfileCapabilities

_REPO_ROOT = Path(__file__).resolve().parents[3]

# Bounds on what one YAML document may expand to. YAML aliases let a few hundred bytes stand for
# billions of values ("billion laughs"); the apiserver refuses such objects (its request limit is
# 3 MiB), and validating one would hang. Real manifests are far below both bounds.
MAX_VALUES = 1_000_000
MAX_DEPTH = 100
DEFAULT_PACKAGES_DIRS = (Path("examples/packages"), _REPO_ROOT / "examples" / "packages")


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read: {err}") from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise UsageError(f"{path}: malformed YAML: nested too deeply") from None
    except (ValueError, OverflowError) as err:  # e.g. an int of more than 4300 digits
        raise UsageError(f"{path}: malformed YAML: {err}") from None
    for i, doc in enumerate(docs, start=1):
        if doc is not None:
            _check_shape(doc, f"{path}: document {i}")
            yield i, doc


def _check_shape(doc: Any, where: str) -> None:
    """Refuse a document that expands to more than MAX_VALUES values (aliases counted every time
    they are used), nests deeper than MAX_DEPTH or contains itself; linear in distinct nodes."""
    if not isinstance(doc, (dict, list)):
        return
    shape: dict[int, tuple[int, int]] = {}  # id(container) -> (values, depth)
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(doc, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids = list(node.values()) if isinstance(node, dict) else node
        if children_done:
            values, depth = 1, 1
            for kid in kids:
                kid_values, kid_depth = shape.get(id(kid), (1, 0))
                values += kid_values
                depth = max(depth, kid_depth + 1)
            if values > MAX_VALUES:
                raise UsageError(
                    f"{where}: expands to more than {MAX_VALUES} values (YAML aliases?)"
                )
            if depth > MAX_DEPTH:
                raise UsageError(f"{where}: nested deeper than {MAX_DEPTH} levels")
            shape[key] = (values, depth)
            open_nodes.discard(key)
            continue
        if key in shape:
            continue
        if key in open_nodes:
            raise UsageError(f"{where}: a YAML alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in kids if isinstance(kid, (dict, list)))


def load_objects(path: Path, kinds: tuple[str, ...]) -> list[ParsedObject]:
    """Every object in `path` (multi-document YAML), each of one of `kinds`."""
    out = []
    for index, doc in _documents(path):
        where = f"{path}: document {index}"
        if isinstance(doc, dict):
            name = (
                (doc.get("metadata") or {}).get("name")
                if isinstance(doc.get("metadata"), dict)
                else None
            )
            kind = doc.get("kind")
            if isinstance(name, str) and name.isprintable() and len(name) <= 253:
                where = f"{path}: {kind if isinstance(kind, str) else 'object'} {name}"
        if isinstance(doc, dict) and doc.get("kind") not in kinds:
            raise UsageError(
                f"{where}: kind: expected {' or '.join(kinds)}, got {doc.get('kind')!r}"
            )
        try:
            out.append(parse_object(doc))
        except ManifestError as err:
            raise UsageError(f"{where}: {err}") from None
    if not out:
        raise UsageError(f"{path}: no {' or '.join(kinds)} found")
    return out


def _yaml_files(directory: Path, what: str) -> list[Path]:
    if not directory.exists():
        raise UsageError(f"{directory}: no such directory ({what})")
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory ({what})")
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))


def load_profiles(directory: Path) -> list[ProfileCapabilities]:
    """The ServerSecurityProfiles in `directory`, as matching sees them."""
    profiles: dict[str, ProfileCapabilities] = {}
    for path in _yaml_files(directory, "--profiles"):
        for obj in load_objects(path, ("ServerSecurityProfile",)):
            assert isinstance(obj.spec, ServerSecurityProfileSpec)
            if obj.name in profiles:
                raise UsageError(f"{path}: ServerSecurityProfile {obj.name}: defined twice")
            profiles[obj.name] = ProfileCapabilities.from_spec(obj.name, obj.spec)
    if not profiles:
        raise UsageError(f"{directory}: no ServerSecurityProfile manifests (*.yaml) found")
    return sorted(profiles.values(), key=lambda p: p.name)


def load_packages(directory: Path | None) -> dict[str, SecurityPackageSpec]:
    """The SecurityPackages in `directory`, or in the examples when none is given."""
    if directory is None:
        directory = next((d for d in DEFAULT_PACKAGES_DIRS if d.is_dir()), None)
        if directory is None:
            return {}
    packages: dict[str, SecurityPackageSpec] = {}
    for path in _yaml_files(directory, "--packages"):
        for obj in load_objects(path, ("SecurityPackage",)):
            assert isinstance(obj.spec, SecurityPackageSpec)
            packages[obj.name] = obj.spec
    return packages
