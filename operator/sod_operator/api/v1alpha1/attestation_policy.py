"""`ServerSecurityProfile.spec.attestation`: how the verifier proves a node has the architecture.

Owned by the trust monitor (issue 5); this first cut carries only what placement needs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from sod_operator.api.v1alpha1.base import ApiModel, ShortText


class AttestationPolicy(ApiModel):
    """Evidence a node must present, freshly, for the verifier to vouch for this profile."""

    architecture: ShortText | None = None
    """The architecture the node's evidence must declare (e.g. `hyperwall`)."""
    freshness_seconds: Annotated[int, Field(ge=5, le=86_400)] = 60
    """Evidence older than this revokes the profile on the node (fail closed)."""
