"""The renewals ConfigMap's watch (`adapters.renewals`) against a scripted client.

Covers: it lists and watches the one ConfigMap by name in the verifier's namespace; every event
hands over the renewals as cached then (level-triggered); an unparsable ConfigMap and a deleted
one count as no renewal; the hand-over runs on the asyncio loop. The real apiserver path (and
RBAC by `resourceNames`) is tests/e2e/test_reliability_authz.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sod_operator.adapters.renewals import RenewalsWatch
from sod_operator.api.v1alpha1.nodeattestation import RENEWALS_KEY, Renewal, RenewalList

from tests.unit.kube.test_informer import ScriptedClient, event, listing
from tests.unit.policy.scenario import T0

NS, NAME = "sod-system", "sod-attestation-renewals"
LISTED = RenewalList(renewals={"hw-1": Renewal(evidence_time=T0, content_sha256="a" * 64)})


def configmap(rv: int, data: str) -> dict[str, Any]:
    return {
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": str(rv)},
        "data": {RENEWALS_KEY: data},
    }


class Recording(ScriptedClient):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.selectors: list[tuple[str, str | None]] = []

    def list(self, path: str, label_selector: str | None, field_selector: str | None) -> Any:
        self.selectors.append((path, field_selector))
        return super().list(path, label_selector, field_selector)


def test_each_event_hands_over_the_cached_renewals_and_bad_ones_count_as_none():
    good = configmap(5, LISTED.model_dump_json(by_alias=True))
    client = Recording(
        [listing(10, good)],
        [[event("MODIFIED", configmap(11, "{garbage")), event("DELETED", configmap(12, ""))]],
    )
    seen: list[RenewalList] = []
    watch = RenewalsWatch(client, NS, NAME, seen.append)  # type: ignore[arg-type]
    watch.informer.stop_event = client.stop
    watch.informer.run()
    assert client.selectors[0] == (f"/api/v1/namespaces/{NS}/configmaps", f"metadata.name={NAME}")
    # ADDED and SYNCED of the listing, the unparsable update, the deletion.
    assert seen == [LISTED, LISTED, RenewalList(), RenewalList()]


def test_the_hand_over_runs_on_the_loop():
    loop = asyncio.new_event_loop()
    got: list[RenewalList] = []
    watch = RenewalsWatch.into_loop(
        ScriptedClient([], []),  # type: ignore[arg-type]
        NS, NAME, loop, got.append,
    )  # fmt: skip
    watch.deliver(LISTED)
    assert got == []  # not from the informer's thread
    loop.run_until_complete(asyncio.sleep(0))
    assert got == [LISTED]
    loop.close()
