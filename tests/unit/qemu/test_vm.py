"""The QEMU command line and the workload options (pure; no QEMU started).

Covers: source and destination command lines identical apart from name, files and -incoming
(QEMU refuses a migration between differently configured machines); TCG, never KVM; the
workload on the kernel command line and its validation; the link shaping command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sod_testbed.qemu.image import GuestImage
from sod_testbed.qemu.netns import LinkShape, tbf_argv
from sod_testbed.qemu.vm import GuestSpec, Workload, qemu_argv

IMAGE = GuestImage(Path("/c/vmlinuz"), Path("/c/initrd"), "linux-image-x", "1", "2")


def test_source_and_destination_differ_only_in_names_and_incoming() -> None:
    spec = GuestSpec(IMAGE, Workload.dirty(60, 256))
    src = qemu_argv(spec, "a", Path("/r"), incoming=False)
    dst = qemu_argv(spec, "b", Path("/r"), incoming=True)
    assert dst[-2:] == ["-incoming", "defer"]
    differ = [(s, d) for s, d in zip(src, dst[:-2], strict=True) if s != d]
    assert differ == [
        ("a", "b"),
        ("file:/r/a.serial", "file:/r/b.serial"),
        ("unix:/r/a.qmp,server=on,wait=off", "unix:/r/b.qmp,server=on,wait=off"),
    ]


def test_tcg_and_the_workload_on_the_kernel_command_line() -> None:
    argv = qemu_argv(GuestSpec(IMAGE, Workload.dirty(30, 128), 256), "a", Path("/r"), False)
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "256M"
    append = argv[argv.index("-append") + 1]
    assert "console=ttyS0" in append
    assert "mig.mode=dirty mig.wss=128 mig.rate=30 mig.chunk=4" in append


def test_workload_names_and_validation() -> None:
    assert Workload().name == "idle"
    assert Workload().cmdline() == "mig.mode=idle"
    assert Workload.dirty(30).name == "dirty30"
    assert Workload.dirty(0).name == "dirtymax"
    with pytest.raises(ValueError, match="multiple"):
        Workload.dirty(30, 250)
    with pytest.raises(ValueError, match="mode"):
        Workload("busy")


def test_the_link_is_shaped_with_a_token_bucket() -> None:
    argv = tbf_argv("ns1", "mig-a", LinkShape(rate_bits=500_000_000, latency_ms=10))
    assert argv[:4] == ["ip", "netns", "exec", "ns1"]
    assert argv[4:] == [
        "tc", "qdisc", "replace", "dev", "mig-a", "root", "tbf",
        "rate", "500000000bit", "burst", "1mb", "latency", "10ms",
    ]  # fmt: skip
