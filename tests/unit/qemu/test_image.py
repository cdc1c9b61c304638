"""Building the guest image: resolving the Debian packages, the cache key and the initramfs
archive (pure; no apt, no QEMU).

Covers: the versioned kernel package from the meta package's record, the candidate version from
apt-cache policy (and none), the cache key changing with each input, and the newc cpio archive read
back entry by entry (names, modes, device numbers, data, 4-byte alignment, trailer). The download
and the boot are covered by tests/e2e/test_qemu_migration.py.
"""

from __future__ import annotations

import pytest
from sod_testbed.qemu.image import (
    INIT_SCRIPT,
    CpioEntry,
    GuestImageError,
    cache_key,
    candidate_version,
    initramfs_entries,
    kernel_package_of,
    newc_archive,
)

META = """Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)
Description: Linux for 64-bit PCs (meta-package)
"""


def test_the_kernel_package_is_the_meta_packages_dependency() -> None:
    assert kernel_package_of(META) == "linux-image-6.1.0-57-amd64"
    with pytest.raises(GuestImageError):
        kernel_package_of("Package: linux-image-amd64\nDepends: something-else\n")


def test_candidate_version_from_apt_cache_policy() -> None:
    policy = "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"
    assert candidate_version(policy) == "1:1.35.0-4+deb12u1+b1"
    with pytest.raises(GuestImageError):
        candidate_version("foo:\n  Installed: (none)\n  Candidate: (none)\n")


def test_the_cache_key_changes_with_every_input() -> None:
    base = ("linux-image-6.1.0-57-amd64", "6.1.192-3", "1:1.35.0-4", b"#!/bin/sh\n")
    keys = {
        cache_key(*base),
        cache_key("linux-image-6.1.0-58-amd64", *base[1:]),
        cache_key(base[0], "6.1.193-1", *base[2:]),
        cache_key(*base[:2], "1:1.36.0-1", base[3]),
        cache_key(*base[:3], b"#!/bin/sh\necho changed\n"),
    }
    assert len(keys) == 5
    assert cache_key(*base) == cache_key(*base)


def read_newc(blob: bytes) -> list[tuple[str, int, tuple[int, int], bytes]]:
    """A reader written from the format description, to check the writer against."""
    out, pos = [], 0
    while True:
        assert blob[pos : pos + 6] == b"070701", pos
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        assert blob[name_start + namesize - 1] == 0
        data_start = name_start + namesize + (-(name_start + namesize) % 4)
        data = blob[data_start : data_start + filesize]
        pos = data_start + filesize + (-(data_start + filesize) % 4)
        if name == "TRAILER!!!":
            assert pos == len(blob)
            return out
        out.append((name, fields[1], (fields[9], fields[10]), data))


def test_the_initramfs_archive_reads_back() -> None:
    init = INIT_SCRIPT.read_bytes()
    entries = initramfs_entries(b"\x7fELF-busybox", init)
    blob = newc_archive(entries)
    assert len(blob) % 4 == 0
    read = {name: (mode, rdev, data) for name, mode, rdev, data in read_newc(blob)}
    assert read["init"] == (0o100755, (0, 0), init)
    assert read["bin/busybox"][2] == b"\x7fELF-busybox"
    assert read["bin/sh"] == (0o120777, (0, 0), b"busybox")
    assert read["dev/console"][:2] == (0o020600, (5, 1))
    assert read["dev"][0] == 0o040755


def test_odd_sizes_are_padded() -> None:
    blob = newc_archive([CpioEntry("a", 0o100644, b"x"), CpioEntry("bcd", 0o100644, b"12345")])
    assert [(n, d) for n, _, _, d in read_newc(blob)] == [("a", b"x"), ("bcd", b"12345")]
