"""Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never both act
(the operator's and the verifier's replicas each elect one leader on their own Lease).

client-go's algorithm: a candidate takes the Lease when it is free, already its own, or when its
record has not changed for `lease_seconds` *as observed locally* (so clock skew between
replicas does not matter); the leader renews every `retry_seconds` with optimistic
concurrency (resourceVersion), and when it cannot renew within `renew_seconds` it has lost
the lease and must stop acting at once. kopf's own peering is not used: with equal priorities
it lets both replicas run.

An identity that survives a container restart (the pod name) lets a restarted leader take its
own Lease back at once; two pods never share one.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sod_operator.kube import ApiError, KubeClient, resource_path

log = logging.getLogger("sod.leader")
COORDINATION = "coordination.k8s.io/v1"


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_seconds: float = 10.0
    retry_seconds: float = 2.0


def add_lease_args(parser: argparse.ArgumentParser, *, name: str, namespace: str) -> None:
    """The leader-election flags the operator and the verifier share; `name` and `namespace`
    are the Lease's defaults ($POD_NAMESPACE, where set, wins over `namespace`)."""
    env = os.environ.get
    le = parser.add_argument_group("leader election (a coordination.k8s.io Lease)")
    le.add_argument("--no-leader-election", action="store_true", help="run without a Lease")
    le.add_argument("--lease-namespace", default=env("POD_NAMESPACE", namespace))
    le.add_argument("--lease-name", default=name)
    le.add_argument(
        "--identity",
        default=env("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
        help="this replica's identity (default: $POD_NAME, so a restarted container retakes it)",
    )
    le.add_argument("--lease-seconds", type=float, default=15.0)
    le.add_argument("--renew-seconds", type=float, default=10.0)
    le.add_argument("--retry-seconds", type=float, default=2.0)


def lease_config(args: argparse.Namespace) -> LeaseConfig:
    """The LeaseConfig of flags that `add_lease_args` registered."""
    return LeaseConfig(
        namespace=args.lease_namespace,
        name=args.lease_name,
        identity=args.identity,
        lease_seconds=args.lease_seconds,
        renew_seconds=args.renew_seconds,
        retry_seconds=args.retry_seconds,
    )


class LeaderElector:
    def __init__(self, kube: KubeClient, config: LeaseConfig):
        self.kube = kube
        self.cfg = config
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _path(self) -> str:
        return resource_path(COORDINATION, "leases", self.cfg.namespace, self.cfg.name)

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = _micro_now()
        return {
            "holderIdentity": self.cfg.identity,
            "leaseDurationSeconds": max(1, round(self.cfg.lease_seconds)),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards. An unreachable apiserver is a
        failed attempt like any other (it used to kill the renewer thread, leaving the operator
        acting without a Lease: found by the reliability suite restarting kube-apiserver)."""
        try:
            return self._try_acquire_or_renew()
        except ApiError as err:
            log.warning(
                "Lease %s/%s: the apiserver is unreachable: %s",
                self.cfg.namespace,
                self.cfg.name,
                err,
            )
            return False

    def _try_acquire_or_renew(self) -> bool:
        try:
            lease = self.kube.request("GET", self._path)
        except ApiError as err:
            if not err.not_found:
                log.warning(
                    "reading Lease %s/%s failed: %s", self.cfg.namespace, self.cfg.name, err
                )
                return False
            body = {
                "apiVersion": COORDINATION,
                "kind": "Lease",
                "metadata": {"name": self.cfg.name, "namespace": self.cfg.namespace},
                "spec": self._spec(0, None),
            }
            try:
                self.kube.request(
                    "POST", resource_path(COORDINATION, "leases", self.cfg.namespace), body=body
                )
            except ApiError as err2:
                log.info("creating Lease failed (someone else was faster?): %s", err2)
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        mono = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        duration = float(spec.get("leaseDurationSeconds") or self.cfg.lease_seconds)
        mine = holder == self.cfg.identity
        expired = mono - self._observed_at > duration
        if holder and not mine and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease["spec"] = self._spec(transitions, spec.get("acquireTime") if mine else None)
        try:
            self.kube.request("PUT", self._path, body=lease)
        except ApiError as err:
            log.info("updating Lease failed: %s", err)
            return False
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until we lead (True) or `stop` is set (False)."""
        stop = stop or self._stop
        announced = False
        while not stop.is_set():
            if self.try_acquire_or_renew():
                self._last_renew = time.monotonic()
                log.info(
                    "acquired Lease %s/%s as %s",
                    self.cfg.namespace,
                    self.cfg.name,
                    self.cfg.identity,
                )
                return True
            if not announced:
                log.info(
                    "waiting for Lease %s/%s (held by another replica)",
                    self.cfg.namespace,
                    self.cfg.name,
                )
                announced = True
            stop.wait(self.cfg.retry_seconds)
        return False

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew in a background thread; call `on_lost` once when the lease cannot be renewed."""

        def loop() -> None:
            while not self._stop.wait(self.cfg.retry_seconds):
                if self.try_acquire_or_renew():
                    self._last_renew = time.monotonic()
                elif time.monotonic() - self._last_renew > self.cfg.renew_seconds:
                    log.error("lost Lease %s/%s: stopping", self.cfg.namespace, self.cfg.name)
                    on_lost()
                    return

        self._thread = threading.Thread(target=loop, name="lease-renewer", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a successor need not wait for expiry."""
        self._stop.set()
        try:
            lease = self.kube.request("GET", self._path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.cfg.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            lease["spec"] = spec
            self.kube.request("PUT", self._path, body=lease)
        except ApiError as err:
            log.warning("releasing Lease failed: %s", err)
