"""`ServerSecurityProfile.status.verifiedNodes`, written off the hot path.

At most once a second per profile (a flapping node must not turn into a write storm), and
only when the count or the profile's generation changed since the last write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sod_operator.kube import SOD, ApiError
from sod_operator.kube import AsyncKube as Kube
from sod_operator.policy.world import World

log = logging.getLogger("sod.controller")


class ProfileStatus:
    def __init__(self, kube: Kube, world: World) -> None:
        self.kube = kube
        self.world = world
        self.dirty: set[str] = set()
        """Profiles whose verified-node count may have changed."""
        self.generation: dict[str, int] = {}
        """Profile → the generation of its spec in the world (only profiles that exist)."""
        self._written: dict[str, tuple[int, int]] = {}

    def forget(self, name: str) -> None:
        self.generation.pop(name, None)
        self._written.pop(name, None)

    async def loop(self, suspended: Callable[[], bool], period: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period)
            if suspended() or not self.dirty:
                continue
            dirty, self.dirty = self.dirty, set()
            for name in sorted(dirty):
                await self._write(name)

    async def _write(self, name: str) -> None:
        if name not in self.generation:
            return  # not (or no longer) a profile: a label without a profile
        want = (len(self.world.by_profile.get(name, ())), self.generation[name])
        if self._written.get(name) == want:
            return
        status = {"verifiedNodes": want[0], "observedGeneration": want[1]}
        try:
            await self.kube.merge_patch(
                SOD, "serversecurityprofiles", "", name, {"status": status}, "status"
            )
        except ApiError as err:
            if not err.not_found:
                log.warning("could not write the status of profile %s: %s", name, err)
                self.dirty.add(name)
            return
        self._written[name] = want
