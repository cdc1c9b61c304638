"""One QEMU process running the test guest under TCG, with a workload chosen on its command line.

TCG, not KVM: on these machines `/dev/kvm` exists but belongs to a software hypervisor (PVM) with
which `-cpu host` aborts and other CPU models never boot (shared/notes/qemu-migration.md §2).
Source and destination must be started with identical options apart from `-incoming defer`
(same memory, CPU model, machine and devices); `-nodefaults -nic none` keeps the device set
minimal. The console goes to a file per process, QMP to a unix socket in the run directory
(unix sockets work across network namespaces, so one harness drives QEMUs in several).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sod_testbed.qemu.console import Console, parse_console
from sod_testbed.qemu.image import GuestImage
from sod_testbed.qemu.qmp import Qmp

QEMU = "qemu-system-x86_64"


class GuestError(RuntimeError):
    """The guest did not start, or did not reach the state waited for."""


@dataclass(frozen=True)
class Workload:
    """`idle`: heartbeat only. `dirty`: rewrite `wss_mib` of random data at `rate_mib_s`
    (0: as fast as the vCPU can)."""

    mode: str = "idle"
    wss_mib: int = 0
    rate_mib_s: int = 0
    chunk_mib: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("idle", "dirty"):
            raise ValueError(f"workload mode must be idle or dirty, got {self.mode!r}")
        if self.mode == "dirty" and (self.wss_mib <= 0 or self.wss_mib % self.chunk_mib):
            raise ValueError(f"wss_mib must be a positive multiple of {self.chunk_mib}")

    @classmethod
    def dirty(cls, rate_mib_s: int, wss_mib: int = 256) -> Workload:
        return cls("dirty", wss_mib, rate_mib_s)

    @property
    def name(self) -> str:
        if self.mode == "idle":
            return "idle"
        return f"dirty{self.rate_mib_s or 'max'}"

    def cmdline(self) -> str:
        parts = [f"mig.mode={self.mode}"]
        if self.mode == "dirty":
            parts += [f"mig.wss={self.wss_mib}", f"mig.rate={self.rate_mib_s}"]
            parts.append(f"mig.chunk={self.chunk_mib}")
        return " ".join(parts)


@dataclass(frozen=True)
class GuestSpec:
    image: GuestImage
    workload: Workload = field(default_factory=Workload)
    memory_mib: int = 512
    cpus: int = 1


def qemu_argv(spec: GuestSpec, name: str, run_dir: Path, incoming: bool) -> list[str]:
    argv = [
        QEMU,
        "-name",
        name,
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-smp",
        str(spec.cpus),
        "-m",
        f"{spec.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{run_dir / (name + '.serial')}",
        "-qmp",
        f"unix:{run_dir / (name + '.qmp')},server=on,wait=off",
        "-kernel",
        str(spec.image.kernel),
        "-initrd",
        str(spec.image.initrd),
        "-append",
        f"console=ttyS0 panic=-1 quiet {spec.workload.cmdline()}",
    ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def short_run_dir(prefix: str = "sodq-") -> Path:
    """A run directory with a short path: a unix socket path is limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class QemuGuest:
    """A QEMU process (optionally in network namespace `netns`) and its QMP connection.

    `boot_sum` is the integrity checksum the guest printed at its first boot; a migration target
    inherits it from its source."""

    def __init__(
        self,
        spec: GuestSpec,
        run_dir: Path,
        name: str,
        netns: str | None = None,
        incoming: bool = False,
    ):
        self.spec = spec
        self.run_dir = run_dir
        self.name = name
        self.netns = netns
        self.incoming = incoming
        self.serial = run_dir / f"{name}.serial"
        self.qmp = Qmp(run_dir / f"{name}.qmp")
        self.boot_sum: str | None = None
        self.started_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> QemuGuest:
        argv = qemu_argv(self.spec, self.name, self.run_dir, self.incoming)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]  # execs: the pid is QEMU's
        log = open(self.run_dir / f"{self.name}.log", "wb")  # noqa: SIM115 - the child owns it
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self.qmp.connect(wait=30.0)
        except Exception as err:
            self.stop()
            raise GuestError(f"{self.name}: QEMU did not start: {err}; {self.log_tail()}") from err
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def console(self) -> Console:
        try:
            return parse_console(self.serial.read_text(errors="replace"))
        except FileNotFoundError:
            return Console()

    def wait_console(
        self, done: Callable[[Console], bool], timeout: float, what: str, poll: float = 0.2
    ) -> Console:
        deadline = time.monotonic() + timeout
        while True:
            con = self.console()
            if done(con):
                return con
            if con.crash_lines or not self.alive():
                raise GuestError(f"{self.name}: guest died waiting for {what}: {con.crash_lines}")
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name}: no {what} within {timeout:.0f} s")
            time.sleep(poll)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait for READY and a first heartbeat (and, dirtying, a filled working set); returns
        the seconds since start."""
        dirty = self.spec.workload.mode == "dirty"
        con = self.wait_console(
            lambda c: bool(c.ready_sum and c.beats and (c.filled or not dirty)), timeout, "READY"
        )
        self.boot_sum = con.ready_sum
        assert self.started_at is not None
        return time.monotonic() - self.started_at

    def cpu_seconds(self) -> float:
        """User + system CPU time of the QEMU process so far."""
        if self._proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.run_dir / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        self.qmp.close()
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
