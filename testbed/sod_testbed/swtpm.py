"""Software TPMs for tests and the sandbox: a local EK CA, manufacturing, running, "booting".

* `LocalCa` — swtpm's local CA kept in a directory of ours (never the system state dir): one
  RSA-3072 root and an intermediate that signs every TPM's EK certificate. Its `bundle_pem()`
  is what the verifier trusts (`--ek-ca-bundle`).
* `manufacture` — `swtpm_setup` with EK (RSA-2048 at 0x81010001, certificate in NV
  0x01c00002) and only the SHA-256 PCR bank active; with `ek="ecc"`/`"both"` also the TCG
  P-256 EK (0x81010002, certificate in NV 0x01c0000a), which swtpm_setup 0.7 does not make
  (its ECC EK is P-384): `provision_ecc_ek`.
* `Swtpm` — `swtpm socket` on a Unix socket (no ports to race for), stopped by its own pid.
* `simulated_boot` — plays firmware: extends the boot chain of the node's architecture
  (`boot_log(architecture)`: each architecture's own firmware and hypervisor) into PCRs 0, 4
  and 7 after a (re)start, so quotes show stable, known values, and writes the TCG2
  crypto-agile event log of exactly those measurements (what the kernel exposes as
  /sys/kernel/security/tpm0/binary_bios_measurements on a real node); `golden_pcrs(arch)`
  are the values, as a profile's `spec.attestation.tpm.pcrs` lists them. `measure` is the
  firmware loading one more component: extended and logged.

swtpm is for tests and demos only (Keylime: "DO NOT USE Keylime in production with a TPM
emulator!"); nothing here weakens a verifier check. Facts and pitfalls: notes/tpm.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sod_operator.attestation.eventlog import EVENT_TYPE_CODES as EV
from sod_operator.attestation.eventlog import (
    Measurement,
    image_load_data,
    write_crypto_agile,
    write_event,
)

EK_CERT_NV_INDEX = 0x01C00002
EK_HANDLE = 0x81010001
EK_TYPES = ("rsa", "ecc", "both")
ECC_EK_CERT_NV_INDEX = 0x01C0000A
ECC_EK_HANDLE = 0x81010002
NV_CHUNK = 512  # below every TPM's TPM2_PT_NV_BUFFER_MAX (libtpms: 1024)


class SwtpmError(RuntimeError):
    """swtpm could not be set up or started; the message says what to do."""


def require_binaries() -> None:
    missing = [b for b in ("swtpm", "swtpm_setup", "swtpm_localca") if shutil.which(b) is None]
    if missing:
        raise SwtpmError(
            f"{', '.join(missing)} not found: run tools/install-system-deps.sh (Debian: swtpm, "
            "swtpm-tools)"
        )


# --------------------------------------------------------------------------- the boot log

LOG_BANKS = ("sha256",)  # the only bank `manufacture` leaves active


def _application(path: str, image: bytes) -> Measurement:
    """A boot application: its image is measured, its load event (device path) logged."""
    return Measurement(
        4, EV["EV_EFI_BOOT_SERVICES_APPLICATION"], image_load_data(path, len(image)), image
    )


PLAIN = "plain"
"""A node with no security architecture (sod_testbed.nodes.PLAIN)."""


def boot_log(architecture: str) -> tuple[Measurement, ...]:
    """What the simulated firmware of a node of `architecture` measures at every boot, with
    TCG event types. Each architecture is its own hardware and hypervisor: its firmware
    (PCR 0, the CRTM version) and its kernel with the architecture's hypervisor (PCR 4) differ,
    so a quote and its log say which platform booted which hypervisor. Same number and kinds
    of events everywhere; `plain` is the generic platform and KVM kernel."""
    hardware = "" if architecture == PLAIN else f" on {architecture} hardware"
    hypervisor = "" if architecture == PLAIN else f", {architecture} hypervisor"
    return (
        Measurement(
            0,
            EV["EV_S_CRTM_VERSION"],
            f"sod-sandbox firmware 1.0 (simulated UEFI){hardware}".encode(),
        ),
        _application("\\EFI\\sod\\loader.efi", b"sod-sandbox boot loader 1.0"),
        _application(
            "\\EFI\\sod\\vmlinuz", f"sod-sandbox kernel 6.1.0 + initrd{hypervisor}".encode()
        ),
        # A text event, not the SecureBoot variable, so PCR 7 keeps the value the recorded
        # golden evidence (tests/unit/attestation/data/golden.json) was quoted with.
        Measurement(7, EV["EV_EFI_ACTION"], b"secure boot: enabled, db=sod-sandbox-platform-key"),
    )


UNEXPECTED_BOOT_COMPONENT = _application(
    "\\EFI\\sod\\bootkit.efi", b"sod-sandbox unexpected boot component: bootkit 0.1"
)
"""What `sodctl sandbox break NODE --how bootloader` makes the firmware load."""


def _payload(m: Measurement) -> bytes:
    return m.data if m.payload is None else m.payload


def replay(events: Iterable[tuple[int, bytes]], size: int = 32) -> dict[int, bytes]:
    """The PCR values an event log produces from a reset (v = H(v ‖ H(event)))."""
    pcrs: dict[int, bytes] = {}
    for index, event in events:
        current = pcrs.get(index, b"\x00" * size)
        pcrs[index] = hashlib.sha256(current + hashlib.sha256(event).digest()).digest()
    return pcrs


def golden_pcrs(architecture: str) -> dict[int, str]:
    """Golden SHA-256 values of PCRs 0, 4 and 7 on a sandbox node of `architecture` (booted
    with `boot_log(architecture)`), as a profile's `spec.attestation.tpm.pcrs` lists them."""
    log = boot_log(architecture)
    return {i: v.hex() for i, v in sorted(replay((m.pcr, _payload(m)) for m in log).items())}


def boot_log_bytes(architecture: str) -> bytes:
    """The TCG2 crypto-agile event log of `boot_log(architecture)`."""
    return write_crypto_agile(list(boot_log(architecture)), LOG_BANKS)


# --------------------------------------------------------------------------- local CA


@dataclass(frozen=True)
class LocalCa:
    """swtpm's local CA, configured to live in `directory`."""

    directory: Path

    @property
    def conf_dir(self) -> Path:
        return self.directory / "conf"

    @property
    def state_dir(self) -> Path:
        return self.directory / "localca"

    @property
    def setup_conf(self) -> Path:
        return self.conf_dir / "swtpm_setup.conf"

    @property
    def root_cert(self) -> Path:
        return self.state_dir / "swtpm-localca-rootca-cert.pem"

    @property
    def issuer_cert(self) -> Path:
        return self.state_dir / "issuercert.pem"

    def write_config(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ca_conf = self.conf_dir / "swtpm-localca.conf"
        options = self.conf_dir / "swtpm-localca.options"
        # swtpm_setup does not expand variables in these files: write absolute paths.
        self.setup_conf.write_text(
            "create_certs_tool = swtpm_localca\n"
            f"create_certs_tool_config = {ca_conf}\n"
            f"create_certs_tool_options = {options}\n"
            "active_pcr_banks = sha256\n"
        )
        ca_conf.write_text(
            f"statedir = {self.state_dir}\n"
            f"signingkey = {self.state_dir / 'signkey.pem'}\n"
            f"issuercert = {self.issuer_cert}\n"
            f"certserial = {self.state_dir / 'certserial'}\n"
        )
        options.write_text(
            "--platform-manufacturer sod-sandbox\n--platform-version 1.0\n--platform-model swtpm\n"
        )

    def bundle_pem(self) -> bytes:
        """Root and intermediate, PEM: the verifier's EK CA bundle."""
        if not self.root_cert.exists():
            raise SwtpmError(f"{self.root_cert} missing: manufacture a TPM with this CA first")
        return self.root_cert.read_bytes() + self.issuer_cert.read_bytes()


def manufacture(state_dir: Path, ca: LocalCa, ek: str = "rsa") -> None:
    """Create a TPM 2.0 state with EKs and EK certificates issued by `ca`.

    `ek`: `rsa` (RSA-2048 EK, certificate in NV 0x01c00002), `ecc` (an ECC-only TPM: P-256
    EK, certificate in NV 0x01c0000a) or `both`.
    """
    if ek not in EK_TYPES:
        raise SwtpmError(f"EK type {ek!r}: expected one of {', '.join(EK_TYPES)}")
    require_binaries()
    ca.write_config()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir.parent / f".{state_dir.name}.tmp"
    tmp.mkdir(exist_ok=True)
    log = state_dir.parent / f"{state_dir.name}-setup.log"
    cmd = [
        "swtpm_setup", "--tpm2", "--tpmstate", str(state_dir),
        "--create-ek-cert", "--create-platform-cert", "--config", str(ca.setup_conf),
        "--pcr-banks", "sha256", "--overwrite", "--logfile", str(log),
    ]  # fmt: skip
    result = subprocess.run(
        cmd, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, check=False
    )
    shutil.rmtree(tmp, ignore_errors=True)
    if result.returncode != 0:
        detail = log.read_text()[-2000:] if log.exists() else result.stderr.decode()[-2000:]
        raise SwtpmError(f"swtpm_setup failed for {state_dir} (rc {result.returncode}): {detail}")
    if ek != "rsa":
        provision_ecc_ek(state_dir, ca, keep_rsa=ek == "both")


def provision_ecc_ek(state_dir: Path, ca: LocalCa, keep_rsa: bool) -> None:
    """Give a manufactured TPM the TCG low-range ECC P-256 EK and its certificate.

    swtpm_setup 0.7 makes an RSA-2048 and a P-384 EK only; most TPMs and tools expect the
    P-256 one. As a TPM vendor would: derive the EK from the L-2 template, persist it at
    0x81010002, have the local CA certify it (swtpm_localca, as swtpm_setup does for its own
    EKs) and store the DER certificate in NV 0x01c0000a (platform-written, write-locked).
    Without `keep_rsa` the RSA EK and its certificate are removed: an ECC-only TPM.
    """
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_HANDLE
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    with tempfile.TemporaryDirectory(prefix="sod-swtpm-") as tmp:
        sw = Swtpm(state_dir, Path(tmp) / "s.sock")  # short path: Unix socket length limit
        sw.start()
        try:
            with ESAPI(sw.tcti) as ectx:
                _, template = create_ek_template("EK-ECC256", NVReadEK(ectx))
                ek, public, *_ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
                ectx.evict_control(ESYS_TR.OWNER, ek, TPM2_HANDLE(ECC_EK_HANDLE))
                ectx.flush_context(ek)
                unique = public.publicArea.unique.ecc
                cert = _certify_ecc_ek(ca, bytes(unique.x), bytes(unique.y), Path(tmp))
                _write_ek_cert(ectx, ECC_EK_CERT_NV_INDEX, cert)
                if not keep_rsa:
                    _remove_rsa_ek(ectx)
        finally:
            sw.stop()


def _certify_ecc_ek(ca: LocalCa, x: bytes, y: bytes, tmp: Path) -> bytes:
    out = tmp / "certs"
    out.mkdir()
    cmd = [
        "swtpm_localca", "--type", "ek", "--ek", f"x={x.hex()},y={y.hex()},id=secp256r1",
        "--dir", str(out), "--tpm2", "--tpm-spec-family", "2.0", "--tpm-spec-level", "0",
        "--tpm-spec-revision", "164", "--tpm-manufacturer", "id:00001014",
        "--tpm-model", "swtpm", "--tpm-version", "id:20191023",
        "--configfile", str(ca.conf_dir / "swtpm-localca.conf"),
        "--optsfile", str(ca.conf_dir / "swtpm-localca.options"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cert = out / "ek.cert"
    if result.returncode != 0 or not cert.exists():
        raise SwtpmError(f"swtpm_localca could not certify the ECC EK: {result.stderr[-2000:]}")
    return cert.read_bytes()


def _write_ek_cert(ectx: Any, index: int, cert: bytes) -> None:
    """NV-define `index` with the attributes swtpm_setup gives its EK certificates, write, lock."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC

    attributes = (
        TPMA_NV.PLATFORMCREATE
        | TPMA_NV.PPWRITE
        | TPMA_NV.WRITEDEFINE
        | TPMA_NV.PPREAD
        | TPMA_NV.OWNERREAD
        | TPMA_NV.AUTHREAD
        | TPMA_NV.NO_DA
    )
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attributes, dataSize=len(cert)
        )
    )
    nv = ectx.nv_define_space(None, public, auth_handle=ESYS_TR.PLATFORM)
    for offset in range(0, len(cert), NV_CHUNK):
        ectx.nv_write(nv, cert[offset : offset + NV_CHUNK], offset, auth_handle=ESYS_TR.PLATFORM)
    ectx.nv_write_lock(nv, auth_handle=ESYS_TR.PLATFORM)


def _remove_rsa_ek(ectx: Any) -> None:
    from tpm2_pytss import ESYS_TR, TPM2_HANDLE

    nv = ectx.tr_from_tpmpublic(TPM2_HANDLE(EK_CERT_NV_INDEX))
    ectx.nv_undefine_space(nv, auth_handle=ESYS_TR.PLATFORM)
    ek = ectx.tr_from_tpmpublic(TPM2_HANDLE(EK_HANDLE))
    ectx.evict_control(ESYS_TR.OWNER, ek, TPM2_HANDLE(EK_HANDLE))


# --------------------------------------------------------------------------- running


class Swtpm:
    """One `swtpm socket` process on a Unix socket."""

    def __init__(self, state_dir: Path, socket: Path | None = None) -> None:
        self.state_dir = state_dir
        self.socket = socket or state_dir.parent / f"{state_dir.name}.sock"
        self.log = state_dir.parent / f"{state_dir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        return [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=unixio,path={self.socket}",
            "--ctrl", f"type=unixio,path={self.socket}.ctrl",
            "--flags", "not-need-init,startup-clear",
            "--log", f"file={self.log}",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        require_binaries()
        for stale in (self.socket, Path(f"{self.socket}.ctrl")):
            stale.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_ready(self.tcti, timeout, self._proc)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def restart(self) -> None:
        """A reboot: PCRs reset, the EK and seeds (hence the AK) stay."""
        self.stop()
        self.start()


def wait_ready(tcti: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    os.environ.setdefault("TSS2_LOG", "all+none")  # probing before swtpm listens logs errors
    from tpm2_pytss import ESAPI, TSS2_Exception

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SwtpmError(f"swtpm exited with {proc.returncode} (tcti {tcti})")
        try:
            with ESAPI(tcti) as ectx:
                ectx.get_random(8)
            return
        except (TSS2_Exception, OSError) as err:
            last = err
            time.sleep(0.01)
    raise SwtpmError(f"swtpm at {tcti} not ready after {timeout}s: {last}")


def extend(tcti: str, events: Sequence[tuple[int, bytes]]) -> None:
    """Extend SHA-256(event) into each PCR (what firmware, or an attacker's module, does)."""
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA

    with ESAPI(tcti) as ectx:
        for index, event in events:
            measurement = hashlib.sha256(event).digest()
            values = TPML_DIGEST_VALUES(
                [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=measurement))]
            )
            ectx.pcr_extend(getattr(ESYS_TR, f"PCR{index}"), values)


def simulated_boot(tcti: str, architecture: str, event_log: Path | None = None) -> None:
    """Measure the boot chain of a node of `architecture` (run right after swtpm (re)started:
    PCRs are reset) and write its TCG2 event log to `event_log`, as firmware hands it to the
    kernel."""
    if event_log is not None:
        event_log.parent.mkdir(parents=True, exist_ok=True)
        event_log.write_bytes(boot_log_bytes(architecture))
    extend(tcti, [(m.pcr, _payload(m)) for m in boot_log(architecture)])


def measure(tcti: str, m: Measurement, event_log: Path) -> None:
    """The firmware measures one more component: logged, then extended."""
    with event_log.open("ab") as f:
        f.write(write_event(m, LOG_BANKS))
    extend(tcti, [(m.pcr, _payload(m))])
