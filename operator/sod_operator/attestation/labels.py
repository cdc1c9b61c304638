"""Verdicts → node labels: `sod.node-restriction.kubernetes.io/profile.<name>=verified`.

Pure. Labels are claims, not proofs: the verifier adds a label only for a profile verified
now, and removes every profile label under our prefix that is not (revoked, stale, or for a
deleted profile). Labels outside `PROFILE_LABEL_PREFIX` are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sod_operator.api.constants import PROFILE_LABEL_PREFIX, VERIFIED, profile_label

# A label name (after the prefix's '/') is at most 63 characters: 'profile.' leaves 55.
MAX_PROFILE_NAME_FOR_LABEL = 63 - len(PROFILE_LABEL_PREFIX.split("/", 1)[1])


def labelable(profile: str) -> bool:
    """Whether `profile`'s name fits a label key (longer names can never be verified)."""
    return 0 < len(profile) <= MAX_PROFILE_NAME_FOR_LABEL


def desired_labels(verified_profiles: Iterable[str]) -> dict[str, str]:
    """The profile labels a node should carry for its verified profiles."""
    return {profile_label(p): VERIFIED for p in verified_profiles if labelable(p)}


def label_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """A JSON merge patch of `metadata.labels` turning `current` into `desired` for our keys.

    `None` deletes a key. Empty when nothing changes (no write).
    """
    patch: dict[str, str | None] = {
        key: None for key in current if key.startswith(PROFILE_LABEL_PREFIX) and key not in desired
    }
    patch.update({k: v for k, v in desired.items() if current.get(k) != v})
    return dict(sorted(patch.items()))


def verified_from_labels(labels: Mapping[str, str]) -> list[str]:
    """The profiles a node's labels claim are verified (what placement reads)."""
    return sorted(
        key[len(PROFILE_LABEL_PREFIX) :]
        for key, value in labels.items()
        if key.startswith(PROFILE_LABEL_PREFIX) and value == VERIFIED
    )
