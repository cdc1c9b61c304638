"""Hypothesis strategies for SecureVM, ServerSecurityProfile and SecurityPackage manifests.

The walk is driven by the CRD schemas in `crds/*.yaml` (generated from the pydantic models), so a
field added to a model is fuzzed without touching this file. What the schemas express only as
CEL (exactly one of options/package/matrix, the 5/6-with-2 conflict, template xor vmRef, jitter
within the interval, golden values of the bank's size) has hand-written generators, because a
random walk almost never satisfies those rules.

A `Case` is one spec plus, when it was broken on purpose, the `Violation`: the field path that a
rejection must name and the rule broken. Three families:

* `valid`: schema walk with the semantic generators (the pydantic model still decides: the
  tests compare verdicts instead of trusting the generator);
* `boundary`: one field set to an edge that is still allowed (exactly `maxLength`, `maxItems`,
  `minimum`, `maximum`);
* `invalid`: one field broken in one way (wrong type, unknown enum, too long/short, pattern,
  below `minimum`/above `maximum`, int64 overflow, too many/few items, duplicate in a set or map
  list, a required field removed, an unknown field) or one CEL rule broken.

Not covered here: `metadata` (names are chosen by the tests) and the KubeVirt template's own
schema (a few valid and junk templates are generated; KubeVirt's CRD judges them when the
operator creates the VirtualMachine).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from sod_operator.api.constants import API_VERSION
from sod_operator.api.vocabulary import (
    IN_VM_OPTIONS,
    OPTION_ENTITY,
    Entity,
    Property,
    Scope,
    SecurityOption,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = {
    "SecureVM": "securevm.yaml",
    "ServerSecurityProfile": "serversecurityprofile.yaml",
    "SecurityPackage": "securitypackage.yaml",
}
KINDS = tuple(CRD_FILES)
NAMESPACED = {"SecureVM": True, "ServerSecurityProfile": False, "SecurityPackage": False}

DELETE = object()
"""Marker value: remove the key instead of setting it."""

UNKNOWN_FIELD = "bogusField"


@dataclass(frozen=True)
class Violation:
    """A rule broken on purpose, and the field path a rejection must name."""

    field: str
    rule: str


@dataclass(frozen=True)
class Case:
    kind: str
    spec: Any
    family: str
    """`valid`, `boundary` or `invalid`."""
    detail: str
    """The rule exercised (`enum@spec.scope`, `cel:union`, ...) for the figures table."""
    violation: Violation | None = None


# --- the CRD schemas ------------------------------------------------------------------------


@functools.cache
def crd(kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "crds" / CRD_FILES[kind]).read_text())
    return doc


def spec_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


def plural(kind: str) -> str:
    return str(crd(kind)["spec"]["names"]["plural"])


def manifest(kind: str, spec: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if NAMESPACED[kind] and namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def field_path(tokens: tuple[str | int, ...], root: str = "spec") -> str:
    out = root
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else f".{t}"
    return out


def _key(tokens: tuple[str | int, ...]) -> str:
    """A schema location without list indexes: `security.matrix.entity`."""
    return ".".join(t for t in tokens if isinstance(t, str))


# --- strings that fit (or break) a pattern at a given length ---------------------------------


def _fits(schema: Mapping[str, Any], value: str) -> bool:
    pattern = schema.get("pattern")
    return pattern is None or re.fullmatch(pattern, value) is not None


def string_of_length(schema: Mapping[str, Any], n: int) -> str | None:
    """A string of exactly `n` characters that matches the schema's pattern, if we find one."""
    if n <= 0:
        return "" if _fits(schema, "") else None
    candidates = ["a" * n, "0" * n, "a." + "b" * (n - 2)]
    return next((c for c in candidates if len(c) == n and _fits(schema, c)), None)


def _pattern_breakers(schema: Mapping[str, Any]) -> list[str]:
    lo = schema.get("minLength", 0)
    hi = schema.get("maxLength", 64)
    raw = ["-a", "a-", "A B", "a/b", "é", "a\nb", "UPPER", "a_", "0x", "zz", ".", "a b"]
    return [s for s in raw if lo <= len(s) <= hi and not _fits(schema, s)]


# --- the valid walk ---------------------------------------------------------------------------


def from_schema(
    schema: Mapping[str, Any],
    tokens: tuple[str | int, ...],
    overrides: Mapping[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """Values that satisfy the schema (not necessarily its CEL rules) at `tokens`."""
    key = _key(tokens)
    if key in overrides:
        return overrides[key]
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(props[k], (*tokens, k), overrides) for k in props if k in required},
            optional={
                k: from_schema(props[k], (*tokens, k), overrides)
                for k in props
                if k not in required
            },
        )
    if kind == "array":
        item = from_schema(schema["items"], (*tokens, 0), overrides)
        lo, hi = schema.get("minItems", 0), min(schema.get("maxItems", 6), 8)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            return st.lists(item, min_size=lo, max_size=hi, unique=True)
        if list_type == "map":
            keys = tuple(schema["x-kubernetes-list-map-keys"])
            return st.lists(
                item, min_size=lo, max_size=hi, unique_by=lambda v: tuple(v.get(k) for k in keys)
            )
        return st.lists(item, min_size=lo, max_size=hi)
    if kind == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 64)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda v: lo <= len(v) <= hi
            )
        return st.text(min_size=lo, max_size=min(hi, 80))
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "boolean":
        return st.booleans()
    return st.none()


def compatible(options: list[str]) -> bool:
    return not (
        SecurityOption.HYPERVISOR_PROTECTION in options and any(o in options for o in IN_VM_OPTIONS)
    )


options_lists = st.lists(
    st.sampled_from([o.value for o in SecurityOption]), min_size=1, max_size=7, unique=True
).filter(compatible)
property_lists = st.lists(
    st.sampled_from([p.value for p in Property]), min_size=1, max_size=2, unique=True
)
scopes = st.sampled_from([s.value for s in Scope])
dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
_IN_VM_ENTITIES = {OPTION_ENTITY[o].value for o in IN_VM_OPTIONS}


def _matrix_ok(rows: list[dict[str, Any]]) -> bool:
    entities = {r["entity"] for r in rows}
    return not (Entity.HYPERVISOR in entities and entities & _IN_VM_ENTITIES)


matrices = st.lists(
    st.fixed_dictionaries(
        {"entity": st.sampled_from([e.value for e in Entity]), "properties": property_lists}
    ),
    min_size=1,
    max_size=7,
    unique_by=lambda r: str(r["entity"]),
).filter(_matrix_ok)


def _with_optional(base: st.SearchStrategy[dict[str, Any]], **optional: Any) -> Any:
    return st.tuples(base, st.fixed_dictionaries({}, optional=optional)).map(
        lambda t: {**t[0], **t[1]}
    )


security_requests = st.one_of(
    _with_optional(
        st.fixed_dictionaries({"options": options_lists}),
        properties=property_lists,
        scope=scopes,
    ),
    st.fixed_dictionaries({"package": dns_labels}),
    _with_optional(st.fixed_dictionaries({"matrix": matrices}), scope=scopes),
)
"""Valid `security` requests in each of the three forms."""

_RUN_STRATEGIES = ["Always", "Halted", "Manual", "RerunOnFailure", "Once"]
vm_templates = st.one_of(
    st.fixed_dictionaries(
        {
            "runStrategy": st.sampled_from(_RUN_STRATEGIES),
            "template": st.fixed_dictionaries(
                {
                    "metadata": st.fixed_dictionaries(
                        {}, optional={"labels": st.dictionaries(dns_labels, dns_labels, max_size=3)}
                    ),
                    "spec": st.fixed_dictionaries(
                        {
                            "domain": st.fixed_dictionaries(
                                {
                                    "devices": st.just({}),
                                    "memory": st.fixed_dictionaries(
                                        {"guest": st.sampled_from(["64Mi", "128Mi", "1Gi"])}
                                    ),
                                }
                            )
                        }
                    ),
                }
            ),
        }
    ),
    # Junk the SecureVM CRD accepts (the template preserves unknown fields) but KubeVirt's
    # VirtualMachine schema does not: the operator must report it, not crash.
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8), max_size=3
    ),
)


@st.composite
def moving_target(draw: st.DrawFn) -> dict[str, Any]:
    interval = draw(st.integers(60, 31_536_000))
    out: dict[str, Any] = {"intervalSeconds": interval}
    if draw(st.booleans()):
        out["jitterSeconds"] = draw(st.integers(0, interval))
    return out


_BANK_HEX = {"SHA256": 64, "SHA384": 96, "SHA512": 128}


@st.composite
def tpm_policies(draw: st.DrawFn) -> dict[str, Any]:
    bank = draw(st.sampled_from(sorted(_BANK_HEX)))
    size = _BANK_HEX[bank]
    digest = st.text("0123456789abcdef", min_size=size, max_size=size)
    pcrs = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "index": st.integers(0, 23),
                    "values": st.lists(digest, min_size=1, max_size=3, unique=True),
                }
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda p: p["index"],
        )
    )
    out: dict[str, Any] = {"pcrs": pcrs}
    if bank != "SHA256" or draw(st.booleans()):
        out["pcrBank"] = bank
    return out


@st.composite
def _securevm_spec(draw: st.DrawFn, rest: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    spec = draw(rest)
    spec["security"] = draw(security_requests)
    if draw(st.booleans()):
        spec["template"] = draw(vm_templates)
    else:
        spec["vmRef"] = {"name": draw(dns_labels)}
    return spec


def _overrides(kind: str) -> dict[str, st.SearchStrategy[Any]]:
    if kind == "SecureVM":
        return {"movingTargetDefense": moving_target()}
    if kind == "ServerSecurityProfile":
        return {"attestation.tpm": tpm_policies()}
    return {"options": options_lists}


def valid_specs(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = spec_schema(kind)
    overrides = _overrides(kind)
    if kind == "SecureVM":
        rest_props = {
            k: v
            for k, v in schema["properties"].items()
            if k not in ("security", "template", "vmRef")
        }
        rest = from_schema({"type": "object", "properties": rest_props}, (), overrides)
        return _securevm_spec(rest)
    return from_schema(schema, (), overrides)


# --- single-field mutations -------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    tokens: tuple[str | int, ...]
    schema: Mapping[str, Any]
    present: bool
    required: bool
    parent_list: Mapping[str, Any] | None = None
    """The list schema when this site is an item of a list."""


def sites(
    value: Any, schema: Mapping[str, Any], tokens: tuple[str | int, ...] = ()
) -> Iterator[Site]:
    """Every schema location in `value`, and every absent optional property of present objects."""
    yield Site(tokens, schema, True, False)
    kind = schema.get("type")
    props = schema.get("properties")
    if kind == "object" and props and isinstance(value, dict):
        required = set(schema.get("required", []))
        for k, sub in props.items():
            if k in value:
                for s in sites(value[k], sub, (*tokens, k)):
                    if s.tokens == (*tokens, k):
                        s = Site(s.tokens, s.schema, True, k in required)
                    yield s
            else:
                yield Site((*tokens, k), sub, False, k in required)
    elif kind == "array" and isinstance(value, list):
        for i, v in enumerate(value):
            for s in sites(v, schema["items"], (*tokens, i)):
                if s.tokens == (*tokens, i):
                    s = Site(s.tokens, s.schema, s.present, False, schema)
                yield s


_WRONG_TYPE: dict[str, list[Any]] = {
    "string": [12345, True, {"a": 1}, ["x"], 1.5],
    "integer": ["12", 1.5, True, {"a": 1}, [1]],
    "boolean": ["true", 1, {"a": 1}],
    "object": ["x", 7, ["x"]],
    "array": ["x", 7, {"a": 1}],
}
# Wrong JSON types that pydantic's lax mode converts ("12" -> 12, True -> 1, "true" -> True)
# while the apiserver rejects them: `sodctl` is lenient there (a documented known limit).
_COERCIBLE = {("integer", "12"), ("integer", True), ("boolean", "true"), ("boolean", 1)}
_INT64_OVERFLOW = [2**63, 2**64 + 1, -(2**63) - 1, 10**30]


def _breaks(site: Site, value: Any) -> list[tuple[str, Any, str]]:
    """(rule, new value or DELETE, field suffix) for each way to break this site alone."""
    s = site.schema
    out: list[tuple[str, Any, str]] = []
    kind = s.get("type")
    if site.tokens:
        for v in _WRONG_TYPE.get(str(kind), [])[:3]:
            coercible = isinstance(v, (str, int)) and (kind, v) in _COERCIBLE
            out.append(("typeCoercible" if coercible else "type", v, ""))
    if site.required and site.present:
        out.append(("required", DELETE, ""))
    if "enum" in s:
        near = ("Bogus", str(s["enum"][0]).lower(), str(s["enum"][0]).upper(), f"{s['enum'][0]} ")
        # A near miss that is itself a member (a lower-case enum lowered) breaks nothing.
        out += [("enum", v, "") for v in dict.fromkeys(near) if v not in s["enum"]]
    elif kind == "string":
        if "maxLength" in s:
            too_long = string_of_length(s, s["maxLength"] + 1)
            if too_long is not None:
                out.append(("maxLength", too_long, ""))
        if s.get("minLength", 0) >= 1:
            out.append(("minLength", "", ""))
        if "pattern" in s:
            out += [("pattern", v, "") for v in _pattern_breakers(s)[:3]]
    elif kind == "integer":
        if "minimum" in s:
            out.append(("minimum", s["minimum"] - 1, ""))
        if "maximum" in s:
            out.append(("maximum", s["maximum"] + 1, ""))
        out += [("int64Overflow", v, "") for v in _INT64_OVERFLOW[:2]]
    elif kind == "array":
        if s.get("minItems", 0) >= 1:
            out.append(("minItems", [], ""))
        if isinstance(value, list) and value:
            if "maxItems" in s:
                extra = s["maxItems"] + 1 - len(value)
                out.append(("maxItems", value + [copy.deepcopy(value[-1])] * max(extra, 0), ""))
            # A duplicate that also overflows maxItems would break two rules at once.
            room = len(value) < s.get("maxItems", len(value) + 1)
            if s.get("x-kubernetes-list-type") in ("set", "map") and room:
                out.append(("duplicate", [*value, copy.deepcopy(value[0])], f"[{len(value)}]"))
    elif kind == "object" and s.get("properties") and isinstance(value, dict):
        out.append(("unknownField", {**value, UNKNOWN_FIELD: 1}, f".{UNKNOWN_FIELD}"))
    return out


def _edges(site: Site) -> list[tuple[str, Any]]:
    """Values at the edge of what this site allows."""
    s = site.schema
    out: list[tuple[str, Any]] = []
    kind = s.get("type")
    if kind == "string" and "enum" not in s and "maxLength" in s:
        at_max = string_of_length(s, s["maxLength"])
        if at_max is not None:
            out.append(("atMaxLength", at_max))
        if "minLength" in s:
            at_min = string_of_length(s, s["minLength"])
            if at_min is not None:
                out.append(("atMinLength", at_min))
    elif kind == "integer":
        out += [(f"at{b.title()}", s[b]) for b in ("minimum", "maximum") if b in s]
    elif kind == "array" and "enum" in s.get("items", {}) and s.get("maxItems"):
        items = list(s["items"]["enum"])[: s["maxItems"]]
        out.append(("atMaxItems", items))
    return out


def _get(root: Any, tokens: tuple[str | int, ...]) -> Any:
    for t in tokens:
        root = root[t]
    return root


def _set(root: Any, tokens: tuple[str | int, ...], value: Any) -> Any:
    if not tokens:
        return value
    parent = _get(root, tokens[:-1])
    if value is DELETE:
        del parent[tokens[-1]]
    else:
        parent[tokens[-1]] = value
    return root


@st.composite
def mutated(draw: st.DrawFn, kind: str, family: str) -> Case:
    spec = draw(valid_specs(kind))
    schema = spec_schema(kind)
    candidates = []
    for site in sites(spec, schema):
        value = _get(spec, site.tokens) if site.present else None
        if family == "invalid":
            candidates += [(site, rule, v, sfx) for rule, v, sfx in _breaks(site, value)]
        else:
            # Under a semantic override the edge may break its CEL rule: leave those alone.
            if _key(site.tokens) in ("security", "movingTargetDefense.jitterSeconds") or any(
                _key(site.tokens).startswith(p) for p in ("security.", "attestation.tpm")
            ):
                continue
            candidates += [(site, rule, v, "") for rule, v in _edges(site)]
    if not candidates:  # e.g. a spec with nothing but a semantic part: nothing to push
        return Case(kind, spec, "valid", "valid")
    # Rule first, then where: otherwise the many `type` and `unknownField` sites crowd out the
    # rare rules (maximum, duplicate, ...).
    rules = sorted({c[1] for c in candidates})
    chosen = draw(st.sampled_from(rules))
    site, rule, new, suffix = draw(st.sampled_from([c for c in candidates if c[1] == chosen]))
    out = _set(copy.deepcopy(spec), site.tokens, new)
    where = field_path(site.tokens) + suffix
    violation = Violation(where, rule) if family == "invalid" else None
    return Case(kind, out, family, f"{rule}@{where}", violation)


# --- CEL rules broken on purpose --------------------------------------------------------------


@st.composite
def cel_violations(draw: st.DrawFn, kind: str) -> Case:
    spec = draw(valid_specs(kind))
    if kind == "SecurityPackage":
        in_vm = draw(st.sampled_from(IN_VM_OPTIONS))
        spec["options"] = [in_vm.value, SecurityOption.HYPERVISOR_PROTECTION.value]
        return Case(kind, spec, "invalid", "cel:optionConflict", Violation("spec.options", "cel"))
    if kind == "ServerSecurityProfile":
        tpm = draw(tpm_policies())
        bank = tpm.get("pcrBank", "SHA256")
        wrong = next(n for b, n in sorted(_BANK_HEX.items()) if b != bank)
        tpm["pcrs"][0]["values"][0] = "a" * wrong
        spec.setdefault("attestation", {})["tpm"] = tpm
        return Case(
            kind,
            spec,
            "invalid",
            "cel:pcrDigestSize",
            Violation("spec.attestation.tpm.pcrs", "cel"),
        )
    how = draw(
        st.sampled_from(
            [
                "union-none",
                "union-two",
                "package-with-properties",
                "matrix-with-properties",
                "option-conflict",
                "matrix-conflict",
                "template-and-vmref",
                "neither-template-nor-vmref",
                "jitter-above-interval",
            ]
        )
    )
    sec: dict[str, Any] = spec["security"]
    where = "spec.security"
    if how == "union-none":
        spec["security"] = {"scope": draw(scopes)}
    elif how == "union-two":
        spec["security"] = {"options": draw(options_lists), "package": draw(dns_labels)}
    elif how == "package-with-properties":
        spec["security"] = {"package": draw(dns_labels), "properties": draw(property_lists)}
    elif how == "matrix-with-properties":
        spec["security"] = {"matrix": draw(matrices), "properties": draw(property_lists)}
    elif how == "option-conflict":
        conflicting = draw(st.sampled_from(IN_VM_OPTIONS))
        spec["security"] = {
            "options": [SecurityOption.HYPERVISOR_PROTECTION.value, conflicting.value]
        }
        where = "spec.security.options"
    elif how == "matrix-conflict":
        entity = draw(st.sampled_from(sorted(_IN_VM_ENTITIES)))
        spec["security"] = {
            "matrix": [
                {"entity": Entity.HYPERVISOR.value, "properties": ["Integrity"]},
                {"entity": entity, "properties": ["Confidentiality"]},
            ]
        }
        where = "spec.security.matrix"
    elif how == "template-and-vmref":
        spec["template"] = draw(vm_templates)
        spec["vmRef"] = {"name": draw(dns_labels)}
        where = "spec"
    elif how == "neither-template-nor-vmref":
        spec.pop("template", None)
        spec.pop("vmRef", None)
        where = "spec"
    else:
        interval = draw(st.integers(60, 10_000))
        spec["movingTargetDefense"] = {"intervalSeconds": interval, "jitterSeconds": interval + 1}
        where = "spec.movingTargetDefense.jitterSeconds"
    del sec
    return Case(kind, spec, "invalid", f"cel:{how}", Violation(where, "cel"))


def cases(kind: str) -> st.SearchStrategy[Case]:
    """Valid, boundary and invalid specs of `kind`, in roughly equal measure."""
    return st.one_of(
        valid_specs(kind).map(lambda s: Case(kind, s, "valid", "valid")),
        mutated(kind, "boundary"),
        mutated(kind, "invalid"),
        cel_violations(kind),
    )


def names_field(reported: str, expected: str) -> bool:
    """Whether an error's field path names `expected` (itself, or something inside it)."""
    reported = reported.strip()
    return reported == expected or reported.startswith((expected + ".", expected + "["))
