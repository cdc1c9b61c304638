"""Golden evidence recorded from swtpm (tests/node_agent/record_golden.py) and helpers."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sod_operator.api.v1alpha1.attestation_policy import AttestationPolicy
from sod_operator.api.v1alpha1.nodeattestation import (
    Challenge,
    ChallengeList,
    NodeAttestation,
    NodeAttestationSpec,
    NodeAttestationStatus,
    Renewal,
)
from sod_operator.attestation import monitor, platform
from sod_operator.attestation.ekcert import CaBundle

from tests.unit.attestation.golden import SeededEntropy, enrollments, policies

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden.json").read_text())


@dataclass
class Step:
    """One recorded verifier step: the agent's spec and the verifier's state around it."""

    name: str
    now: datetime
    generation: int
    spec: dict[str, Any]
    status_before: dict[str, Any]
    status_after: dict[str, Any]

    def attestation(
        self, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
    ) -> NodeAttestation:
        return NodeAttestation(
            name="node-1",
            generation=self.generation,
            spec=NodeAttestationSpec.model_validate(self.spec if spec is None else spec),
            status=NodeAttestationStatus.model_validate(
                self.status_before if status is None else status
            ),
        )

    def mutable_spec(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec)


def step(name: str) -> Step:
    for raw in GOLDEN["steps"]:
        if raw["name"] == name:
            return Step(
                name=name,
                now=datetime.fromisoformat(raw["now"]),
                generation=raw["generation"],
                spec=raw["spec"],
                status_before=raw["statusBefore"],
                status_after=raw["statusAfter"],
            )
    raise KeyError(name)


BUNDLE = CaBundle.from_pem(GOLDEN["caBundle"].encode())
ROGUE_BUNDLE = CaBundle.from_pem(GOLDEN["rogueCaBundle"].encode())
SETTINGS = monitor.Settings(bundle=BUNDLE)
ENROLLMENTS = enrollments(base64.b64decode(step("identity").spec["tpm"]["ekCertificate"]))
"""The recorded node's EK, enrolled for hyperwall by the platform team (as when recorded)."""
PUBLISHED = ChallengeList(
    challenges=sorted(
        {
            (c := Challenge.model_validate(raw["statusBefore"]["challenge"])).nonce: c
            for raw in GOLDEN["steps"]
            if raw["statusBefore"].get("challenge")
        }.values(),
        key=lambda c: c.issued_time,
        reverse=True,
    )
)
"""Every nonce the recording's verifier issued, as if all were still published (the golden
steps were recorded when each node had its own nonce in `status.challenge`)."""


def run(
    att: NodeAttestation,
    now: datetime,
    pols: Mapping[str, AttestationPolicy | None] | None = None,
    labels: dict[str, str] | None = None,
    settings: monitor.Settings = SETTINGS,
    node: bool = True,
    ek_enrolled_by: str | None = None,
    entropy: Callable[[int], bytes] | None = None,
    enrollments: platform.Enrollments = ENROLLMENTS,
    challenges: ChallengeList = PUBLISHED,
    renewal: Renewal | None = None,
) -> monitor.StepOutput:
    return monitor.step(
        monitor.StepInput(
            attestation=att,
            node=monitor.NodeView(labels or {}) if node else None,
            policies=policies() if pols is None else pols,
            now=now,
            ek_enrolled_by=ek_enrolled_by,
            enrollments=enrollments,
            challenges=challenges,
            renewal=renewal,
        ),
        settings,
        entropy or SeededEntropy(b"unit tests"),
    )


def verdict(out: monitor.StepOutput, profile: str) -> tuple[str, str]:
    for v in out.status.verdicts:
        if v.profile == profile:
            return str(v.result), str(v.reason)
    raise KeyError(profile)


@pytest.fixture
def good() -> Step:
    return step("good")
