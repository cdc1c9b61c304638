"""Parse Kubernetes objects of our kinds into models, with errors that name the field.

Shared by the operator (objects from the API) and `sodctl` (objects from files): both report
`spec.security.options[1]: ...`, never a pydantic dump.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sod_operator.api.constants import API_VERSION, MAX_PROFILE_NAME, MAX_SECUREVM_NAME
from sod_operator.api.v1alpha1.base import DUPLICATE_ERROR
from sod_operator.api.v1alpha1.profile import PROFILE_NAME_MESSAGE, ServerSecurityProfileSpec
from sod_operator.api.v1alpha1.securevm import SECUREVM_NAME_MESSAGE, SecureVMSpec
from sod_operator.api.v1alpha1.security import SecurityPackageSpec

M = TypeVar("M", bound=BaseModel)

_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain (lower case alphanumerics, '-' and '.', starting and "
    "ending with an alphanumeric, at most 253 characters)"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_RULE = (
    "a lowercase RFC 1123 label (lower case alphanumerics and '-', starting and ending with "
    "an alphanumeric, at most 63 characters)"
)

SPEC_MODELS: dict[str, type[BaseModel]] = {
    "SecureVM": SecureVMSpec,
    "ServerSecurityProfile": ServerSecurityProfileSpec,
    "SecurityPackage": SecurityPackageSpec,
}


class ManifestError(ValueError):
    """An object that does not fit its kind's schema: `field_path: reason`."""

    def __init__(self, field_path: str, reason: str):
        super().__init__(f"{field_path}: {reason}" if field_path else reason)
        self.field_path = field_path
        self.reason = reason


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("tagged-union", "list", "str"):
            continue  # pydantic-internal location segments
        else:
            out += f".{part}" if out else part
    return out


def first_error(err: ValidationError, prefix: str) -> ManifestError:
    """The first validation error as a `ManifestError` with a Kubernetes-style field path."""
    detail = err.errors(include_url=False)[0]
    msg = str(detail["msg"]).removeprefix("Value error, ")
    if detail["type"] == "enum" and "ctx" in detail:
        msg = f"{detail['input']!r} is not one of {detail['ctx'].get('expected', '')}"
    elif detail["type"] == DUPLICATE_ERROR and "ctx" in detail:
        return ManifestError(_path((*detail["loc"], detail["ctx"]["index"]), prefix), msg)
    elif detail["type"] == "missing":
        msg = "required field is missing"
    return ManifestError(_path(tuple(detail["loc"]), prefix), msg)


def parse_model(model: type[M], data: Any, prefix: str) -> M:
    """Validate `data` (camelCase, as on the wire) as `model`, or raise `ManifestError`."""
    try:
        return model.model_validate(data, by_alias=True)
    except ValidationError as err:
        raise first_error(err, prefix) from None


@dataclass(frozen=True)
class ParsedObject:
    kind: str
    name: str
    namespace: str | None
    spec: BaseModel

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def parse_object(body: Mapping[str, Any], expected_kind: str | None = None) -> ParsedObject:
    """Parse one object of our kinds; `expected_kind` rejects any other kind."""
    if not isinstance(body, Mapping):
        raise ManifestError(
            "", "expected a Kubernetes object (a mapping), got " + type(body).__name__
        )
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    if expected_kind is not None and kind != expected_kind:
        raise ManifestError("kind", f"expected {expected_kind!r} ({API_VERSION}), got {kind!r}")
    if not isinstance(kind, str) or kind not in SPEC_MODELS:
        raise ManifestError("kind", f"{kind!r} is not one of {', '.join(SPEC_MODELS)}")
    if api_version != API_VERSION:
        raise ManifestError("apiVersion", f"expected {API_VERSION!r}, got {api_version!r}")
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        raise ManifestError("metadata.name", "required field is missing")
    name, namespace = metadata["name"], metadata.get("namespace")
    # The apiserver's own rules for object names and namespaces, so files fail offline too.
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ManifestError("metadata.name", f"{name!r} is not {_SUBDOMAIN_RULE}")
    if namespace is not None and (
        not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace)
    ):
        raise ManifestError("metadata.namespace", f"{namespace!r} is not {_LABEL_RULE}")
    if kind == "ServerSecurityProfile" and len(name) > MAX_PROFILE_NAME:
        # Mirrors the CRD's rule: the name becomes a node label name (at most 63 characters).
        raise ManifestError("metadata.name", PROFILE_NAME_MESSAGE)
    if kind == "SecureVM" and len(name) > MAX_SECUREVM_NAME:
        raise ManifestError("metadata.name", SECUREVM_NAME_MESSAGE)
    spec = parse_model(SPEC_MODELS[kind], body.get("spec"), "spec")
    if kind == "SecureVM" and not namespace:
        namespace = "default"
    return ParsedObject(kind=kind, name=name, namespace=namespace, spec=spec)
