"""Shared pieces of the `sod.dev/v1alpha1` models: the model base and `Condition`.

Models are the single source of truth for the CRD schemas (see `sod_codegen.crdgen`):
field docstrings become `description`s for `kubectl explain`, and every string, list and
number is bounded so CEL rules fit the apiserver's cost budget.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from sod_operator.api.conditions import ConditionState

# Bounded scalar types used across the API (Kubernetes names and messages).
DNS1123Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    ),
]
ShortText = Annotated[str, Field(max_length=256)]
MAX_MESSAGE = 32768
Message = Annotated[str, Field(max_length=MAX_MESSAGE)]
Reason = Annotated[
    str,
    Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
]
Generation = Annotated[int, Field(ge=0, le=2**53)]


class ApiModel(BaseModel):
    """Base of every wire model: camelCase on the wire, snake_case in Python.

    `extra="ignore"` tolerates fields from a newer CRD; the schema itself never carries
    `additionalProperties: false` (the apiserver prunes unknown fields).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
        frozen=False,
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """The standard Kubernetes condition (`metav1.Condition`)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """Type of the condition, in CamelCase."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: Generation | None = None
    """The `.metadata.generation` the condition was set for."""
    last_transition_time: datetime
    """When the condition last changed status."""
    reason: Reason
    """A CamelCase, machine-readable reason for the condition's last transition."""
    message: Message = ""
    """A human-readable message with details about the transition."""

    def to_state(self) -> ConditionState:
        """The condition as the pure core's `set_condition` handles it."""
        return ConditionState(
            type=self.type,
            status=str(self.status),
            reason=self.reason,
            message=self.message,
            observed_generation=self.observed_generation,
            last_transition_time=self.last_transition_time,
        )

    @classmethod
    def from_state(cls, state: ConditionState) -> Condition:
        return cls(
            type=state.type,
            status=ConditionStatus(state.status),
            reason=state.reason,
            message=state.message[:MAX_MESSAGE],
            observed_generation=state.observed_generation,
            last_transition_time=state.last_transition_time,
        )


CONDITIONS_LIST = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""Schema extras for a `conditions` list: a list-map keyed by `type`."""


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: DNS1123Name
    """Name of the referenced object."""


CelRule = dict[str, str]


def with_cel_rules(*rules: CelRule) -> ConfigDict:
    """The base model config plus CEL `x-kubernetes-validations` on the model's schema.

    Each rule is mirrored by a pydantic validator on the same model, so offline tools reject
    what the apiserver rejects; the e2e tier checks the apiserver side.
    """
    return ConfigDict(
        **ApiModel.model_config,
        json_schema_extra={"x-kubernetes-validations": cast("list[JsonValue]", list(rules))},
    )


H = TypeVar("H", bound=Hashable)

DUPLICATE_ERROR = "duplicate"
"""pydantic error type of a duplicate list item; its ctx `index` is the duplicate's position,
so errors name `field[index]` as the apiserver does."""


def _duplicate(what: str, first: int, index: int) -> PydanticCustomError:
    return PydanticCustomError(
        DUPLICATE_ERROR,
        "duplicate {what} (items {first} and {index})",
        {"what": what, "first": first, "index": index},
    )


def _unique_set(items: list[H]) -> list[H]:
    seen: dict[H, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            raise _duplicate(f"value '{item}'", seen[item], i)
        seen[item] = i
    return items


UNIQUE_SET = AfterValidator(_unique_set)
"""The apiserver's `x-kubernetes-list-type: set` rule, so offline tools reject duplicates too."""


def unique_map(key: str) -> AfterValidator:
    """The apiserver's `x-kubernetes-list-type: map` rule on `key` (one item per key)."""

    def check(items: list[Any]) -> list[Any]:
        seen: dict[object, int] = {}
        for i, item in enumerate(items):
            value = getattr(item, key)
            if value in seen:
                raise _duplicate(f"{key} '{value}'", seen[value], i)
            seen[value] = i
        return items

    return AfterValidator(check)
