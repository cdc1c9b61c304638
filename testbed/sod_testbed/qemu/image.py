"""The test guest's kernel and initramfs, built from Debian packages only, cached by their versions.

* kernel: the `vmlinuz` of the package `linux-image-amd64` depends on (the stock Debian kernel;
  8250 console, initramfs, tmpfs and devtmpfs are built in, so the guest needs no modules),
  fetched with `apt-get download` and unpacked with `dpkg-deb -x`, never installed.
* initramfs: `busybox` from `busybox-static` (also downloaded, not installed) and `guest-init.sh`
  as `/init`, in a newc cpio written here (device nodes need no root), gzip with mtime 0.

Cache: `$SOD_CACHE/qemu-guest/<key>/` with `vmlinuz`, `initramfs.cpio.gz` and `manifest.json`;
the key hashes both package versions, the init script and `FORMAT`, so a new kernel from the
archive, an edited init script or a change to this builder makes a new directory.

`python -m sod_testbed.qemu.image` (tools/build-guest.sh) builds it and prints the directory.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sod_testbed.binaries import cache_dir

FORMAT = 1  # bump when the layout of the image changes
INIT_SCRIPT = Path(__file__).with_name("guest-init.sh")
KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"


class GuestImageError(RuntimeError):
    """The guest could not be built (a Debian package could not be resolved or fetched)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_package: str
    kernel_version: str
    busybox_version: str


# ---- pure parts ---------------------------------------------------------------------------------


def kernel_package_of(meta_record: str) -> str:
    """The versioned image package from `apt-cache show linux-image-amd64` (its Depends)."""
    for line in meta_record.splitlines():
        if line.startswith("Depends:"):
            match = re.search(r"(linux-image-[0-9][^\s,(]*-amd64)\b", line)
            if match:
                return match.group(1)
    raise GuestImageError(f"no linux-image-*-amd64 dependency in the {KERNEL_META} record")


def candidate_version(policy: str) -> str:
    """The `Candidate:` of `apt-cache policy PKG`."""
    match = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.MULTILINE)
    if not match or match.group(1) == "(none)":
        raise GuestImageError("apt has no candidate version (run apt-get update)")
    return match.group(1)


def cache_key(kernel_package: str, kernel_version: str, busybox_version: str, init: bytes) -> str:
    h = hashlib.sha256()
    for part in (str(FORMAT), kernel_package, kernel_version, busybox_version):
        h.update(part.encode() + b"\0")
    h.update(init)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # file type bits included (0o100755, 0o040755, 0o020600, 0o120777)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks (Documentation/driver-api/
    early-userspace/buffer-format.rst): 110-byte ASCII headers, name and data padded to 4."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = [
            ino if entry.name != "TRAILER!!!" else 0,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if entry.mode & 0o170000 == 0o040000 else 1,  # nlink
            0,  # mtime: reproducible archives
            len(entry.data),
            0,  # dev major
            0,  # dev minor
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # check
        ]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + name
        out += b"\0" * (-len(out) % 4)
        out += entry.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs_entries(busybox: bytes, init: bytes) -> list[CpioEntry]:
    dirs = ["bin", "dev", "proc", "sys", "run", "tmp"]
    return [
        *(CpioEntry(d, 0o040755) for d in dirs),
        CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
        CpioEntry("dev/ttyS0", 0o020600, rdev=(4, 64)),
        CpioEntry("dev/null", 0o020666, rdev=(1, 3)),
        CpioEntry("bin/busybox", 0o100755, busybox),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("init", 0o100755, init),
    ]


# ---- the build (apt-get, dpkg-deb) --------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GuestImageError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _resolve() -> tuple[str, str, str]:
    """(kernel package, its version, busybox-static version) as apt sees them now."""
    kernel_package = kernel_package_of(
        _run(["apt-cache", "show", "--no-all-versions", KERNEL_META])
    )
    kernel_version = candidate_version(_run(["apt-cache", "policy", kernel_package]))
    busybox_version = candidate_version(_run(["apt-cache", "policy", BUSYBOX]))
    return kernel_package, kernel_version, busybox_version


def _download_and_unpack(packages: list[str], work: Path) -> Path:
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", "-q", *packages], cwd=debs)
    root = work / "root"
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    return root


def _vmlinuz(root: Path) -> Path:
    found = sorted((root / "boot").glob("vmlinuz-*"))
    if not found:
        raise GuestImageError("the kernel package has no /boot/vmlinuz-*")
    return found[0]


def build_guest(cache: Path | None = None, log: bool = True) -> GuestImage:
    """The cached guest, built first if this combination of versions was never built."""
    init = INIT_SCRIPT.read_bytes()
    try:
        resolved = _resolve()
    except GuestImageError:
        _run(["apt-get", "update", "-qq"])  # a fresh container has no package lists yet
        resolved = _resolve()
    kernel_package, kernel_version, busybox_version = resolved
    key = cache_key(kernel_package, kernel_version, busybox_version, init)
    out = (cache or cache_dir()) / "qemu-guest" / key
    image = GuestImage(
        out / "vmlinuz", out / "initramfs.cpio.gz", kernel_package, kernel_version, busybox_version
    )
    if (out / "manifest.json").exists():
        return image
    if log:
        print(f"[guest] building {kernel_package} {kernel_version} + busybox", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work = Path(tmp)
        root = _download_and_unpack([f"{kernel_package}={kernel_version}", BUSYBOX], work)
        stage = work / "out"
        stage.mkdir()
        shutil.copyfile(_vmlinuz(root), stage / "vmlinuz")
        cpio = newc_archive(initramfs_entries((root / "bin" / "busybox").read_bytes(), init))
        (stage / "initramfs.cpio.gz").write_bytes(gzip.compress(cpio, mtime=0))
        manifest = {
            "kernel_package": kernel_package,
            "kernel_version": kernel_version,
            "busybox_version": busybox_version,
            "init_sha256": hashlib.sha256(init).hexdigest(),
            "format": FORMAT,
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(stage, out)
        except OSError:  # built concurrently by another process: theirs is as good
            if not (out / "manifest.json").exists():
                raise
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sod_testbed.qemu.image",
        description="Build (or find cached) the QEMU test guest from Debian packages.",
    )
    parser.add_argument("--cache", type=Path, default=None, help="default: $SOD_CACHE")
    args = parser.parse_args(argv)
    try:
        image = build_guest(args.cache)
    except GuestImageError as err:
        print(f"[guest] {err}", file=sys.stderr)
        return 1
    print(image.kernel.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
