"""A QMP client on a unix socket (stdlib only): commands, and the events QEMU sends in between.

QMP is JSON, one object per line: a greeting, then `{"execute": ...}` answered by `{"return": ...}`
or `{"error": ...}`; events (`{"event": "STOP", "timestamp": {...}}`) may arrive at any time,
also between a command and its answer, so every line read is sorted into the answer or the event
log. Event timestamps are QEMU's host wall clock, so events of two QEMUs on one host can be
compared (the STOP on the source and the RESUME on the destination bound the guest's pause).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JsonObj = dict[str, Any]


class QmpError(RuntimeError):
    """QEMU answered with an error, or the connection broke."""


@dataclass(frozen=True)
class QmpEvent:
    name: str
    timestamp: float  # seconds since the epoch, QEMU's clock
    data: JsonObj


def parse_event(msg: JsonObj) -> QmpEvent:
    ts = msg.get("timestamp") or {}
    seconds = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
    return QmpEvent(str(msg["event"]), seconds, dict(msg.get("data") or {}))


class Qmp:
    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout
        self.events: list[QmpEvent] = []
        self._buf = b""
        self._sock: socket.socket | None = None

    def connect(self, wait: float = 30.0) -> Qmp:
        """Connect (waiting for QEMU to create the socket) and leave capabilities negotiation."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"QMP socket {self.path}: {err}") from err
                time.sleep(0.05)
        sock.settimeout(self.timeout)
        self._sock = sock
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: JsonObj = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                err = reply["error"]
                raise QmpError(f"{command}: {err.get('class')}: {err.get('desc')}")

    def pump(self, seconds: float = 0.0) -> list[QmpEvent]:
        """Collect events that arrive within `seconds` (0: only those already sent)."""
        assert self._sock is not None
        before = len(self.events)
        deadline = time.monotonic() + seconds
        while True:
            while b"\n" in self._buf:
                self._take_line()
            left = deadline - time.monotonic()
            self._sock.settimeout(max(left, 0.0) or 0.0001)
            try:
                chunk = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                break
            finally:
                self._sock.settimeout(self.timeout)
            if not chunk:
                break
            self._buf += chunk
        while b"\n" in self._buf:
            self._take_line()
        return self.events[before:]

    def event(self, name: str) -> QmpEvent | None:
        """The last event called `name` received so far."""
        return next((e for e in reversed(self.events) if e.name == name), None)

    # ---- wire ----

    def _send(self, msg: JsonObj) -> None:
        if self._sock is None:
            raise QmpError("QMP: not connected")
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as err:
            raise QmpError(f"QMP {self.path}: {err}") from err

    def _read(self) -> JsonObj:
        """The next non-event message; events met on the way go to `events`."""
        while True:
            if b"\n" not in self._buf:
                self._recv()
                continue
            msg = self._take_line()
            if msg is not None and "event" not in msg:
                return msg

    def _recv(self) -> None:
        assert self._sock is not None
        try:
            chunk = self._sock.recv(65536)
        except OSError as err:
            raise QmpError(f"QMP {self.path}: {err}") from err
        if not chunk:
            raise QmpError(f"QMP {self.path}: connection closed")
        self._buf += chunk

    def _take_line(self) -> JsonObj | None:
        line, _, self._buf = self._buf.partition(b"\n")
        if not line.strip():
            return None
        msg: JsonObj = json.loads(line)
        if "event" in msg:
            self.events.append(parse_event(msg))
        return msg
