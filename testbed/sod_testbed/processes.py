"""Supervision of the sandbox's child processes: each runs in its own session (so its process
group id equals its pid), logs to a file, and is stopped by signalling its whole group.

A process is identified by its pid *and* its start time (field 22 of /proc/PID/stat), so a later
`sodctl sandbox down` from another shell never signals an unrelated process that reused a pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_GRACE_SECONDS = 10.0


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent can reap it
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    """What the state file remembers about a process: enough to find and stop it later."""

    name: str
    pid: int
    start_time: int
    argv: tuple[str, ...]
    log: str

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "startTime": self.start_time,
            "argv": list(self.argv),
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_time=int(data["startTime"]),
            argv=tuple(data["argv"]),
            log=str(data["log"]),
        )


class ManagedProcess:
    """A child process started by this sandbox (or re-attached from a state file)."""

    def __init__(self, record: ProcessRecord, popen: subprocess.Popen[bytes] | None = None):
        self.record = record
        self._popen = popen

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def log_path(self) -> Path:
        return Path(self.record.log)

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        start_time = process_start_time(popen.pid)
        if start_time is None:  # exited at once; keep a record so the log is still reported
            start_time = -1
        return cls(ProcessRecord(name, popen.pid, start_time, tuple(argv), str(log_path)), popen)

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self.record.alive()

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL it."""
        if not self.alive():
            self._reap()
            return
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.alive():
                break
            time.sleep(0.05)
        # Children that ignored SIGTERM or outlived the leader still share its process group.
        self._signal_group(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process group at once: no clean shutdown (the reliability trials)."""
        self._signal_group(signal.SIGKILL)
        self._reap()

    def _signal_group(self, sig: signal.Signals) -> None:
        pid = self.record.pid
        # Never signal a group we cannot prove is ours: the leader must be alive and the same
        # process we started, or we started it in this interpreter (then the group is ours).
        if self._popen is None and not self.record.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def _reap(self) -> None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)

    def tail(self, max_bytes: int = 8000) -> str:
        return tail_file(self.log_path, max_bytes)


def tail_file(path: Path, max_bytes: int = 8000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return f"(no log at {path})"
    text = data.decode(errors="replace")
    if size > max_bytes:
        text = "..." + text[text.find("\n") + 1 :]
    return text
