"""kopf wiring, and nothing else: every handler is a few lines that hand over to the controller.

Per watched kind two handlers:

* an **index** handler folds each object into the controller's world. kopf calls index handlers
  for the initial listing and holds every other handler back until all indexed kinds are fully
  listed — so the planner never acts on a half-known cluster (e.g. SecureVMs listed before the
  nodes would look non-compliant);
* an **event** handler (called only once all kinds are listed) releases the planner and handles
  deletions (kopf does not call index handlers for them).

One input is not a kopf watch: the verifier's fleet renewals ConfigMap (`adapters.renewals`,
started at start-up), which the planner also waits for before it acts.

kopf 1.45 has no time-based batching any more (`settings.batching.batch_window` is deprecated
and ignored): each watch event reaches a per-object worker at once, which is what the
reaction-time target needs. Batching across objects happens in the controller instead
(`adapters.queue`: all SecureVMs dirtied by one event are planned together).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from sod_operator.adapters.controller import Controller, Kind
from sod_operator.adapters.runtime import (
    build_controller,
    configure_kopf,
    connection_info,
    watch_renewals,
)

KUBEVIRT = ("kubevirt.io", "v1")
SOD = ("sod.dev", "v1alpha1")
log = logging.getLogger("sod.handlers")


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return connection_info(memo.options)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    memo.controller = build_controller(memo.options)
    # Not a kopf handler: kopf would watch every ConfigMap in the cluster (adapters.renewals).
    memo.renewals = watch_renewals(memo.options, memo.controller)
    memo.loop_task = asyncio.get_running_loop().create_task(memo.controller.run())


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.loop_task.cancel()
    memo.renewals.stop()
    await memo.controller.stop()
    # kopf waits for a threading.Event stop-flag in an executor thread; on SIGTERM it stops
    # without the flag, and that thread kept the process from exiting (20 s until SIGKILL, seen
    # by the reliability suite). Raising the flag here lets the process end.
    memo.stop_flag.set()


@kopf.on.probe(id="queue")
def queue_depth(memo: kopf.Memo, **_: Any) -> int:
    controller: Controller = memo.controller
    return controller.queue_depth()


def _observe(memo: kopf.Memo, kind: Kind, body: kopf.Body, deleted: bool = False) -> None:
    memo.controller.observe(kind, dict(body), deleted)


def _react(memo: kopf.Memo, kind: Kind, body: kopf.Body, event_type: str | None) -> None:
    memo.controller.set_ready()
    if event_type == "DELETED":
        _observe(memo, kind, body, deleted=True)


# ---- nodes: their verified-profile labels are the trust the verifier established


@kopf.index("", "v1", "nodes")
async def index_nodes(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.NODE, body)


@kopf.on.event("", "v1", "nodes")
async def event_nodes(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.NODE, body, type)


# ---- verdict expiries: a label outliving its verdict is void (fail closed without a verifier)


@kopf.index(*SOD, "nodeattestations")
async def index_attestations(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.ATTESTATION, body)


@kopf.on.event(*SOD, "nodeattestations")
async def event_attestations(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.ATTESTATION, body, type)


# ---- the catalog


@kopf.index(*SOD, "serversecurityprofiles")
async def index_profiles(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.PROFILE, body)


@kopf.on.event(*SOD, "serversecurityprofiles")
async def event_profiles(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.PROFILE, body, type)


@kopf.index(*SOD, "securitypackages")
async def index_packages(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.PACKAGE, body)


@kopf.on.event(*SOD, "securitypackages")
async def event_packages(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.PACKAGE, body, type)


# ---- the tenants' requests


@kopf.index(*SOD, "securevms")
async def index_securevms(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.SECUREVM, body)


@kopf.on.event(*SOD, "securevms")
async def event_securevms(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.SECUREVM, body, type)


# ---- KubeVirt: VMs, their instances and migrations


@kopf.index(*KUBEVIRT, "virtualmachines")
async def index_vms(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.VM, body)


@kopf.on.event(*KUBEVIRT, "virtualmachines")
async def event_vms(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.VM, body, type)


@kopf.index(*KUBEVIRT, "virtualmachineinstances")
async def index_vmis(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.VMI, body)


@kopf.on.event(*KUBEVIRT, "virtualmachineinstances")
async def event_vmis(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.VMI, body, type)


@kopf.index(*KUBEVIRT, "virtualmachineinstancemigrations")
async def index_migrations(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.MIGRATION, body)


@kopf.on.event(*KUBEVIRT, "virtualmachineinstancemigrations")
async def event_migrations(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.MIGRATION, body, type)


# ---- virt-launcher pods: the node the scheduler bound each VMI to (a VMI's status.nodeName is
# tenant-writable, issue 19). kopf filters labels client-side: it watches every pod.

LAUNCHER = {"kubevirt.io": "virt-launcher"}


@kopf.index("", "v1", "pods", labels=LAUNCHER)
async def index_launcher_pods(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, Kind.POD, body)


@kopf.on.event("", "v1", "pods", labels=LAUNCHER)
async def event_launcher_pods(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _react(memo, Kind.POD, body, type)
