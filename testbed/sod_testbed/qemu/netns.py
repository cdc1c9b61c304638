"""Two "hosts" on a shaped link: a pair of network namespaces joined by a veth pair, with a token
bucket (`tc tbf`) on each side's egress.

Why not loopback with QEMU's `max-bandwidth`: QEMU lifts its own rate limit for the final
stop-and-copy (`migration_completion()`), so on loopback the downtime comes out as a memory copy
(19 ms instead of ~290 ms for the 60 MiB/s guest). A shaped link limits that phase too. This
kernel has tbf but not netem (no added latency or loss). A large burst is needed at HZ=250.
Needs root (CAP_NET_ADMIN); `ip netns exec NS qemu ...` puts a QEMU on one side.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from dataclasses import dataclass

_serial = itertools.count()


@dataclass(frozen=True)
class LinkShape:
    rate_bits: int = 1_000_000_000
    burst: str = "1mb"
    latency_ms: int = 50

    def describe(self) -> str:
        rate = f"{self.rate_bits / 1e9:g} Gbit/s"
        return f"veth + tbf {rate} (burst {self.burst}, latency {self.latency_ms} ms)"


def tbf_argv(netns: str, dev: str, shape: LinkShape) -> list[str]:
    return [
        "ip", "netns", "exec", netns,
        "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", f"{shape.rate_bits}bit", "burst", shape.burst, "latency", f"{shape.latency_ms}ms",
    ]  # fmt: skip


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _shape(netns: str, dev: str, shape: LinkShape) -> None:
    proc = subprocess.run(tbf_argv(netns, dev, shape), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"tc tbf in {netns}: {proc.stderr.strip()}")


def _delete(netns: str) -> None:
    """Deleting a namespace also deletes the veth ends (and a bridge) in it; best effort."""
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


class NetnsPair:
    """Namespaces `a` and `b` (addresses `addr_a`, `addr_b` on the link), removed by close()."""

    def __init__(self, shape: LinkShape | None = None, tag: str = "sodq"):
        n = next(_serial)
        self.shape = shape or LinkShape()
        self.a = f"{tag}{os.getpid()}-{n}a"
        self.b = f"{tag}{os.getpid()}-{n}b"
        self.addr_a, self.addr_b = "10.77.0.1", "10.77.0.2"

    def create(self) -> NetnsPair:
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", "mig-a", "netns", self.a, "type", "veth", "peer", "name", "mig-b",
                "netns", self.b)  # fmt: skip
            for ns, dev, addr in ((self.a, "mig-a", self.addr_a), (self.b, "mig-b", self.addr_b)):
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _shape(ns, dev, self.shape)
        except OSError:
            self.close()
            raise
        return self

    def address(self, netns: str) -> str:
        return self.addr_a if netns == self.a else self.addr_b

    def other(self, netns: str) -> str:
        return self.b if netns == self.a else self.a

    def close(self) -> None:
        for ns in (self.a, self.b):
            _delete(ns)

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.close()


class NodeFabric:
    """One network namespace per node, each joined to a bridge (in a hub namespace) by a veth
    pair whose node end is shaped (`tc tbf`, as NetnsPair): the nodes' NICs on a switch. The
    player's real guests run in their node's namespace, so a migration crosses the source
    node's shaped egress, the stop-and-copy included. Namespaces are created on first use and
    removed by close()."""

    SUBNET = "10.78"

    def __init__(self, shape: LinkShape | None = None, tag: str = "sodf"):
        self.shape = shape or LinkShape()
        self.prefix = f"{tag}{os.getpid()}-{next(_serial)}"
        self.hub = f"{self.prefix}h"
        self._nodes: dict[str, tuple[str, str]] = {}  # node -> (namespace, address)
        self._lock = threading.Lock()

    def place(self, node: str) -> tuple[str, str]:
        """The namespace and address of `node`, created on first use."""
        with self._lock:
            if node not in self._nodes:
                if not self._nodes:
                    self._create_hub()
                self._nodes[node] = self._add_node(len(self._nodes) + 1)
            return self._nodes[node]

    def _create_hub(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def _add_node(self, i: int) -> tuple[str, str]:
        ns, address = f"{self.prefix}n{i}", f"{self.SUBNET}.{i // 250}.{i % 250 + 1}"
        _ip("netns", "add", ns)
        try:
            self._wire(ns, address, i)
        except OSError:
            _delete(ns)
            raise
        return ns, address

    def _wire(self, ns: str, address: str, i: int) -> None:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}",
            "netns", self.hub)  # fmt: skip
        _ip("-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/16", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _shape(ns, "eth0", self.shape)

    def close(self) -> None:
        with self._lock:
            names = [ns for ns, _ in self._nodes.values()] + ([self.hub] if self._nodes else [])
            self._nodes.clear()
        for ns in names:
            _delete(ns)
