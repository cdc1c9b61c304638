"""`NodeAttestation`: evidence of one node (spec, by its agent) and the verdict (status).

First cut so the CRD generator has every kind; the trust monitor (issue 5) owns this module
and replaces it with the full evidence and verdict models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sod_operator.api.v1alpha1.base import CONDITIONS_LIST, ApiModel, Condition, Generation


class NodeAttestationSpec(ApiModel):
    """Evidence written by the node's agent."""


class NodeAttestationStatus(ApiModel):
    """The verifier's verdict."""

    observed_generation: Generation | None = None
    """The generation this verdict was computed for."""
    conditions: Annotated[
        list[Condition], Field(max_length=16, json_schema_extra=CONDITIONS_LIST)
    ] | None = None
    """Standard conditions."""
