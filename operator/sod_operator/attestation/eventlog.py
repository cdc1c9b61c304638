"""TCG boot event logs: parse, decode and replay (pure; bytes in, value objects out).

Two formats exist (TCG PC Client Platform Firmware Profile, §10):

* **SHA1 legacy** (`TCG_PCClientPCREvent`): pcrIndex u32, eventType u32, a 20-byte SHA1
  digest, eventDataSize u32, event data. One bank: `sha1`.
* **Crypto-agile** (`TCG_PCR_EVENT2`): the first event is a legacy-format `EV_NO_ACTION`
  whose data is the *Spec ID Event* (signature `Spec ID Event03`) listing the hash algorithms
  and their digest sizes; every later event carries a count of (algorithm id, digest) pairs.

Integers are little-endian. `replay` recomputes every PCR the log touches, per bank, the
way the TPM extended it: `PCR = H(PCR ‖ digest)` from the reset value (zeros, or the
locality in the last byte for PCR 0 when a `StartupLocality` event says so); `EV_NO_ACTION`
events are informational and never extended. A log is only evidence once its replay equals
the PCR values a verified quote shows: the log itself is unsigned.

Every malformed input raises `EventLogError` naming the byte offset and event number.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

# TPM_ALG_ID → (bank name as tpm2-tools prints it, hashlib name).
ALGORITHMS: dict[int, tuple[str, str]] = {
    0x0004: ("sha1", "sha1"),
    0x000B: ("sha256", "sha256"),
    0x000C: ("sha384", "sha384"),
    0x000D: ("sha512", "sha512"),
    0x0012: ("sm3_256", "sm3"),
}
MAX_LOG_BYTES = 16 * 1024 * 1024
"""Real logs are tens of KiB; refuse anything absurd before parsing."""
MAX_EVENT_DATA = 1024 * 1024
MAX_PCR = 23

EV_NO_ACTION = 0x3
_EFI = 0x80000000
EVENT_TYPES: dict[int, str] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x13: "EV_POST_CODE2",
    _EFI + 0x1: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    _EFI + 0x2: "EV_EFI_VARIABLE_BOOT",
    _EFI + 0x3: "EV_EFI_BOOT_SERVICES_APPLICATION",
    _EFI + 0x4: "EV_EFI_BOOT_SERVICES_DRIVER",
    _EFI + 0x5: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    _EFI + 0x6: "EV_EFI_GPT_EVENT",
    _EFI + 0x7: "EV_EFI_ACTION",
    _EFI + 0x8: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    _EFI + 0x9: "EV_EFI_HANDOFF_TABLES",
    _EFI + 0xA: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    _EFI + 0xB: "EV_EFI_HANDOFF_TABLES2",
    _EFI + 0xC: "EV_EFI_VARIABLE_BOOT2",
    _EFI + 0xD: "EV_EFI_GPT_EVENT2",
    _EFI + 0x10: "EV_EFI_HCRTM_EVENT",
    _EFI + 0xE0: "EV_EFI_VARIABLE_AUTHORITY",
    _EFI + 0xE1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    _EFI + 0xE2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
EVENT_TYPE_CODES: dict[str, int] = {name: code for code, name in EVENT_TYPES.items()}
_VARIABLE_EVENTS = {_EFI + 0x1, _EFI + 0x2, _EFI + 0xC, _EFI + 0xE0}
_IMAGE_EVENTS = {_EFI + 0x3, _EFI + 0x4, _EFI + 0x5}
_TEXT_EVENTS = {0x5, 0xD, _EFI + 0x7}  # EV_ACTION, EV_IPL, EV_EFI_ACTION: printable strings
_SPEC_ID = b"Spec ID Event03\x00"
_STARTUP_LOCALITY = b"StartupLocality\x00"
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")


class EventLogError(ValueError):
    """The bytes are not a well-formed TCG event log."""


def event_type_name(code: int) -> str:
    return EVENT_TYPES.get(code, f"0x{code:08x}")


@dataclass(frozen=True)
class Variable:
    """A UEFI variable measured by an `EV_EFI_VARIABLE_*` event (`UEFI_VARIABLE_DATA`)."""

    guid: uuid.UUID
    name: str
    data: bytes


@dataclass(frozen=True)
class Event:
    """One measurement: extended into `pcr` of every bank in `digests` (unless EV_NO_ACTION)."""

    number: int
    """Position in the log, 0 for the first record (tpm2_eventlog's EventNum)."""
    pcr: int
    type: int
    digests: Mapping[str, bytes]
    data: bytes

    @property
    def type_name(self) -> str:
        return event_type_name(self.type)

    @property
    def extends(self) -> bool:
        return self.type != EV_NO_ACTION

    @property
    def variable(self) -> Variable | None:
        """The measured UEFI variable, for the variable event types (None when unparsable)."""
        if self.type not in _VARIABLE_EVENTS:
            return None
        return _parse_variable(self.data)

    @property
    def text(self) -> str | None:
        """The ASCII description of EV_ACTION, EV_IPL and EV_EFI_ACTION events."""
        if self.type not in _TEXT_EVENTS:
            return None
        return self.data.rstrip(b"\x00").decode("utf-8", "backslashreplace")

    def label(self) -> str:
        """How a reason names this event: number, PCR, type and what it measured."""
        what = self.type_name
        var = self.variable
        if var is not None:
            what += f" {var.name}"
        elif self.text is not None:
            what += f" {_quoted(self.text[:60])}"
        elif self.type in _IMAGE_EVENTS:
            path = image_path(self.data)
            if path:
                what += f" {_quoted(path[:80])}"
        return f"event #{self.number} (PCR {self.pcr} {what})"


def _quoted(text: str) -> str:
    """In quotes, on one line, printable (a path or text as the firmware logged it)."""
    return "'" + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) + "'"


@dataclass(frozen=True)
class EventLog:
    crypto_agile: bool
    banks: tuple[str, ...]
    """Banks every extending event carries a digest for, in Spec ID order."""
    events: tuple[Event, ...]
    startup_locality: int = 0
    digest_sizes: Mapping[str, int] = field(default_factory=dict)

    def replay(self) -> dict[str, dict[int, bytes]]:
        """The PCR values this log produces, per bank, for every PCR it extends."""
        out: dict[str, dict[int, bytes]] = {}
        for bank in self.banks:
            algo = _hashlib_name(bank)
            pcrs: dict[int, bytes] = {}
            for ev in self.events:
                if not ev.extends:
                    continue
                old = pcrs.get(ev.pcr) or self.reset_value(bank, ev.pcr)
                pcrs[ev.pcr] = hashlib.new(algo, old + ev.digests[bank]).digest()
            out[bank] = dict(sorted(pcrs.items()))
        return out

    def reset_value(self, bank: str, pcr: int) -> bytes:
        """A PCR's value before any event: 0, PCR 0 the startup locality, 17-22 all ones."""
        size = self.digest_sizes[bank]
        if 17 <= pcr <= 22:
            return b"\xff" * size
        return bytes(size - 1) + bytes([self.startup_locality if pcr == 0 else 0])

    def extending(self, pcr: int) -> list[Event]:
        return [e for e in self.events if e.extends and e.pcr == pcr]


def _hashlib_name(bank: str) -> str:
    for name, algo in ALGORITHMS.values():
        if name == bank:
            return algo
    raise EventLogError(f"unsupported hash algorithm {bank}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.event = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EventLogError(
                f"truncated at byte {self.pos} in event #{self.event}: {what} needs {n} bytes, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def fail(self, message: str) -> EventLogError:
        return EventLogError(f"event #{self.event} (byte {self.pos}): {message}")

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def parse(data: bytes) -> EventLog:
    """Parse a binary TCG event log (SHA1 legacy or crypto-agile)."""
    if not data:
        raise EventLogError("empty event log")
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(f"event log of {len(data)} bytes exceeds {MAX_LOG_BYTES}")
    r = _Reader(data)
    first = _legacy_event(r)
    if first.type == EV_NO_ACTION and first.pcr == 0 and first.data.startswith(_SPEC_ID):
        sizes = _spec_id(first.data, r)
        events = [first]
        locality = 0
        while not r.done:
            r.event = len(events)
            ev = _agile_event(r, sizes)
            locality = _locality(ev, locality)
            events.append(ev)
        banks = tuple(sizes)
        return EventLog(True, banks, tuple(events), locality, dict(sizes))
    events = [first]
    locality = _locality(first, 0)
    while not r.done:
        r.event = len(events)
        ev = _legacy_event(r)
        locality = _locality(ev, locality)
        events.append(ev)
    return EventLog(False, ("sha1",), tuple(events), locality, {"sha1": 20})


def _locality(ev: Event, current: int) -> int:
    """PCR 0's reset value: the StartupLocality event (§10.4.5.3) names the locality."""
    if ev.type == EV_NO_ACTION and ev.pcr == 0 and ev.data.startswith(_STARTUP_LOCALITY):
        if len(ev.data) != len(_STARTUP_LOCALITY) + 1:
            raise EventLogError(f"event #{ev.number}: StartupLocality event is not 17 bytes")
        return ev.data[-1]
    return current


def _header(r: _Reader) -> tuple[int, int]:
    pcr, etype = r.u32("pcrIndex"), r.u32("eventType")
    # Windows logs its AIK in an EV_NO_ACTION event "for PCR -1": never extended, so harmless.
    if pcr > MAX_PCR and etype != EV_NO_ACTION:
        raise r.fail(f"PCR index {pcr} is not 0-{MAX_PCR}")
    return pcr, etype


def _event_data(r: _Reader) -> bytes:
    size = r.u32("eventDataSize")
    if size > MAX_EVENT_DATA:
        raise r.fail(f"event data of {size} bytes exceeds {MAX_EVENT_DATA}")
    return r.take(size, "event data")


def _legacy_event(r: _Reader) -> Event:
    number = r.event
    pcr, etype = _header(r)
    digest = r.take(20, "SHA1 digest")
    return Event(number, pcr, etype, {"sha1": digest}, _event_data(r))


def _agile_event(r: _Reader, sizes: Mapping[str, int]) -> Event:
    number = r.event
    pcr, etype = _header(r)
    count = r.u32("digest count")
    if count > len(ALGORITHMS):
        raise r.fail(f"{count} digests, more than the {len(ALGORITHMS)} known algorithms")
    digests: dict[str, bytes] = {}
    for _ in range(count):
        alg = r.u16("algorithm id")
        if alg not in ALGORITHMS or ALGORITHMS[alg][0] not in sizes:
            raise r.fail(f"digest of algorithm 0x{alg:04x}, which the Spec ID event does not list")
        bank = ALGORITHMS[alg][0]
        if bank in digests:
            raise r.fail(f"two {bank} digests")
        digests[bank] = r.take(sizes[bank], f"{bank} digest")
    data = _event_data(r)
    missing = [b for b in sizes if b not in digests]
    if missing and etype != EV_NO_ACTION:
        raise r.fail(f"no digest for bank(s) {missing}: the log cannot be replayed for them")
    return Event(number, pcr, etype, digests, data)


def _spec_id(data: bytes, outer: _Reader) -> dict[str, int]:
    """Banks and digest sizes from the Spec ID Event03 (TCG_EfiSpecIdEvent)."""
    r = _Reader(data)
    r.take(16, "Spec ID signature")
    r.take(4 + 4, "platformClass, version, errata, uintnSize")
    n = r.u32("numberOfAlgorithms")
    if not 1 <= n <= len(ALGORITHMS):
        raise outer.fail(f"Spec ID event lists {n} algorithms")
    sizes: dict[str, int] = {}
    for _ in range(n):
        alg, size = r.u16("algorithmId"), r.u16("digestSize")
        if alg not in ALGORITHMS:
            raise outer.fail(f"Spec ID event lists unknown algorithm 0x{alg:04x}")
        bank, algo = ALGORITHMS[alg]
        if size != hashlib.new(algo).digest_size:
            raise outer.fail(f"Spec ID event gives {bank} a digest size of {size}")
        sizes[bank] = size
    vendor = r.take(1, "vendorInfoSize")[0]
    r.take(vendor, "vendorInfo")
    return sizes


def _parse_variable(data: bytes) -> Variable | None:
    if len(data) < 32:
        return None
    guid = uuid.UUID(bytes_le=data[:16])
    name_len, data_len = struct.unpack("<QQ", data[16:32])
    end = 32 + 2 * name_len
    if name_len > 1024 or end + data_len != len(data):
        return None
    name = data[32:end].decode("utf-16-le", "replace").rstrip("\x00")
    return Variable(guid, name, data[end:])


def image_path(data: bytes) -> str:
    """The file path(s) in an `UEFI_IMAGE_LOAD_EVENT`'s device path, '' if none."""
    if len(data) < 32:
        return ""
    (dp_len,) = struct.unpack("<Q", data[24:32])
    dp = data[32 : 32 + dp_len]
    parts: list[str] = []
    pos = 0
    while pos + 4 <= len(dp):
        kind, sub, length = dp[pos], dp[pos + 1], struct.unpack("<H", dp[pos + 2 : pos + 4])[0]
        if length < 4:
            break
        if kind == 0x04 and sub == 0x04:  # media device path, file path node
            text = dp[pos + 4 : pos + length].decode("utf-16-le", "replace").rstrip("\x00")
            parts.append(text)
        pos += length
    return "".join(parts)


def secure_boot_event(log: EventLog) -> Event | None:
    """The EV_EFI_VARIABLE_DRIVER_CONFIG event measuring `SecureBoot` into PCR 7, if any."""
    for ev in log.extending(7):
        var = ev.variable
        if (
            ev.type == _EFI + 0x1
            and var is not None
            and var.guid == EFI_GLOBAL_VARIABLE
            and var.name == "SecureBoot"
        ):
            return ev
    return None


def secure_boot_state(log: EventLog) -> bool | None:
    """The `SecureBoot` variable's value as measured in PCR 7 (None: not measured)."""
    ev = secure_boot_event(log)
    var = ev.variable if ev is not None else None
    return None if var is None else var.data not in (b"", b"\x00")


def measures_its_data(ev: Event) -> str | None:
    """None when every digest of `ev` is the hash of its event data, else the failing bank.

    True by specification for EV_EFI_VARIABLE_DRIVER_CONFIG and EV_SEPARATOR: checking it
    is what makes their *data* (e.g. SecureBoot=1) evidence and not just a claim."""
    for bank, digest in ev.digests.items():
        if hashlib.new(_hashlib_name(bank), ev.data).digest() != digest:
            return bank
    return None


def to_json(log: EventLog) -> dict[str, object]:
    """The `sodctl eventlog -o json` document: replayed PCRs per bank and every event."""
    pcrs = {
        bank: {str(i): v.hex() for i, v in values.items()} for bank, values in log.replay().items()
    }
    return {"pcrs": pcrs, "events": [_event_json(e) for e in log.events]}


def _event_json(ev: Event) -> dict[str, object]:
    doc: dict[str, object] = {
        "number": ev.number,
        "pcr": ev.pcr,
        "type": ev.type_name,
        "digests": {bank: d.hex() for bank, d in ev.digests.items()},
        "dataSize": len(ev.data),
    }
    var = ev.variable
    if var is not None:
        doc["variable"] = {"guid": str(var.guid), "name": var.name, "data": var.data.hex()}
    elif ev.text is not None:
        doc["text"] = ev.text
    elif ev.type in _IMAGE_EVENTS:
        doc["path"] = image_path(ev.data)
    else:
        doc["data"] = ev.data.hex()
    return doc


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Measurement:
    """What firmware measures: `payload` is hashed (per bank) and extended, `data` is logged.

    For most events the payload is the event data itself; for a boot application it is the
    image (the log then holds its load event, e.g. its device path)."""

    pcr: int
    type: int
    data: bytes
    payload: bytes | None = None

    def digest(self, bank: str) -> bytes:
        body = self.data if self.payload is None else self.payload
        return hashlib.new(_hashlib_name(bank), body).digest()


_ALG_IDS = {name: alg for alg, (name, _) in ALGORITHMS.items()}


def write_crypto_agile(measurements: list[Measurement], banks: tuple[str, ...]) -> bytes:
    """A TCG2 crypto-agile log (Spec ID event first) of `measurements`, in order."""
    spec = bytearray(_SPEC_ID)
    spec += struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))  # class, 2.0 errata 0, UINT64
    for bank in banks:
        spec += struct.pack("<HH", _ALG_IDS[bank], hashlib.new(_hashlib_name(bank)).digest_size)
    spec += b"\x00"  # no vendor info
    out = bytearray(struct.pack("<II", 0, EV_NO_ACTION) + bytes(20))
    out += struct.pack("<I", len(spec)) + spec
    for m in measurements:
        out += write_event(m, banks)
    return bytes(out)


def write_event(m: Measurement, banks: tuple[str, ...]) -> bytes:
    """One `TCG_PCR_EVENT2` record (to append to a crypto-agile log with these banks)."""
    out = bytearray(struct.pack("<III", m.pcr, m.type, len(banks)))
    for bank in banks:
        out += struct.pack("<H", _ALG_IDS[bank]) + m.digest(bank)
    return bytes(out + struct.pack("<I", len(m.data)) + m.data)


def serialize(log: EventLog) -> bytes:
    """The log in its own binary format (`parse(serialize(log)) == log`)."""
    out = bytearray()
    for ev in log.events:
        out += struct.pack("<II", ev.pcr, ev.type)
        if not log.crypto_agile or ev is log.events[0]:  # a TCG_PCClientPCREvent record
            out += ev.digests["sha1"]
        else:
            out += struct.pack("<I", len(ev.digests))
            for bank, digest in ev.digests.items():
                out += struct.pack("<H", _ALG_IDS[bank]) + digest
        out += struct.pack("<I", len(ev.data)) + ev.data
    return bytes(out)


def variable_data(guid: uuid.UUID, name: str, value: bytes) -> bytes:
    """A `UEFI_VARIABLE_DATA` structure (the data of EV_EFI_VARIABLE_* events)."""
    encoded = name.encode("utf-16-le")
    return guid.bytes_le + struct.pack("<QQ", len(name), len(value)) + encoded + value


def image_load_data(path: str, length: int) -> bytes:
    """A `UEFI_IMAGE_LOAD_EVENT` whose device path is one file-path node and the end node."""
    text = (path + "\x00").encode("utf-16-le")
    node = struct.pack("<BBH", 0x04, 0x04, 4 + len(text)) + text
    dp = node + struct.pack("<BBH", 0x7F, 0xFF, 4)
    return struct.pack("<QQQQ", 0, length, 0, len(dp)) + dp
