"""Moving target defense schedule (paper, Section III-E): when a VM moves next.

The jitter is derived from the SecureVM's uid and relocation count, not from a random source:
the schedule survives an operator restart unchanged, and stays unpredictable across VMs.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sod_operator.api.v1alpha1.securevm import MovingTargetDefense


def jitter_fraction(uid: str, seq: int) -> float:
    """A deterministic value in [-1, 1] for (uid, seq)."""
    digest = hashlib.sha256(f"mtd/{uid}/{seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(2**64 - 1) * 2.0 - 1.0


def next_move_time(base: datetime, mtd: MovingTargetDefense, uid: str, seq: int) -> datetime:
    """`base` + interval ± jitter; never earlier than `base` + 1 s."""
    offset = mtd.interval_seconds + jitter_fraction(uid, seq) * mtd.jitter_seconds
    return base + timedelta(seconds=max(1.0, offset))
