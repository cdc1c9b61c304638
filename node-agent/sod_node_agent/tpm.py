"""The node's TPM through tpm2-pytss: EK certificate and public, the AK, activation, quotes.

One `TpmSession` per round: it opens an ESAPI context, creates the attestation key and
flushes everything it created on exit. A TPM without a resource manager (swtpm, or
/dev/tpm0) keeps transient objects and sessions across connections and has three object
slots, so a crashed agent's leftovers are flushed once at start-up (`flush_leftovers`).

* AK: a primary ECC P-256 ECDSA-SHA256 restricted signing key in the endorsement hierarchy.
  Deterministic (same seed + template = same key), so it survives restarts and reboots
  without storing anything, and its quotes carry meaningful reset/restart counters.
* EK: RSA-2048 (certificate in NV index 0x01c00002, persistent at 0x81010001) or ECC NIST
  P-256 (certificate in NV 0x01c0000a, persistent at 0x81010002), chosen by `ek_type`:
  `auto` takes the one whose certificate the TPM has, RSA when it has both (so an agent
  upgrade never changes an enrolled node's EK). The persistent EK is used when present, else
  the EK is derived from the TCG template (`EK-RSA2048` / `EK-ECC256`, low range L-1/L-2,
  policy A), the same key the certificate is for.
* Quotes: PCRs are read before and after the quote and the round is retried if they moved,
  so the reported values are the quoted ones.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HANDLE,
    TPM2_HT,
    TPM2_SE,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPMA_OBJECT,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.utils import NVReadEK, create_ek_template


@dataclass(frozen=True)
class EkKind:
    """Where a TCG low-range EK of one algorithm lives (TCG EK Credential Profile 2.x §2.2.1)."""

    name: str
    cert_index: int
    persistent_handle: int
    template: str
    key_type: TPM2_ALG


EK_KINDS: dict[str, EkKind] = {
    "rsa": EkKind("rsa", 0x01C00002, 0x81010001, "EK-RSA2048", TPM2_ALG.RSA),
    "ecc": EkKind("ecc", 0x01C0000A, 0x81010002, "EK-ECC256", TPM2_ALG.ECC),
}
EK_TYPES = ("auto", *EK_KINDS)
TPM_CC_FLUSH_CONTEXT = 0x00000165
TPM_ST_NO_SESSIONS = 0x8001
PCR_READ_MAX = 8  # TPM2_PCR_Read returns at most 8 digests per call
QUOTE_ATTEMPTS = 3

AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)
_BANKS = {"SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512"}


class TpmError(RuntimeError):
    """The TPM refused or is unreachable; the message says which step."""


@dataclass(frozen=True)
class PcrSelection:
    """A bank (wire name, e.g. `SHA256`) and PCR indices."""

    bank: str
    indices: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """`sha256:0-7,16` → PcrSelection("SHA256", (0..7, 16))."""
        bank, _, spec = text.partition(":")
        wire = bank.strip().upper()
        if wire not in _BANKS or not spec:
            raise ValueError(
                f"PCR selection {text!r}: expected e.g. 'sha256:0-7' or 'sha256:0,4,7'"
            )
        indices: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            try:
                start, end = int(lo), int(hi or lo)
            except ValueError as err:
                raise ValueError(f"PCR selection {text!r}: {part!r} is not an index") from err
            if not 0 <= start <= end <= 23:
                raise ValueError(f"PCR selection {text!r}: indices must be 0-23")
            indices.update(range(start, end + 1))
        return cls(wire, tuple(sorted(indices)))

    def tss(self, indices: Sequence[int] | None = None) -> str:
        return f"{_BANKS[self.bank]}:{','.join(str(i) for i in indices or self.indices)}"


@dataclass(frozen=True)
class Identity:
    ek_certificate: bytes
    ek_public: bytes
    ak_public: bytes
    ak_name: bytes


@dataclass(frozen=True)
class QuoteResult:
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]


def flush_leftovers(tcti: str) -> int:
    """Flush every transient object and session left in the TPM; returns how many.

    Only safe when this agent is the TPM's sole user (a DaemonSet per node, no resource
    manager); ESYS cannot wrap sessions it did not start, so this sends raw FlushContext.
    """
    name, _, conf = tcti.partition(":")
    raw = TCTILdr(name, conf or None)
    try:
        handles: list[int] = []
        with ESAPI(raw) as ectx:
            for ht in (TPM2_HT.TRANSIENT, TPM2_HT.HMAC_SESSION, TPM2_HT.POLICY_SESSION):
                _, data = ectx.get_capability(TPM2_CAP.HANDLES, int(ht) << 24, 64)
                handles.extend(int(h) for h in data.data.handles)
        for handle in handles:
            raw.transmit(struct.pack(">HIII", TPM_ST_NO_SESSIONS, 14, TPM_CC_FLUSH_CONTEXT, handle))
            raw.receive()
        return len(handles)
    finally:
        raw.close()


def _has_nv_index(ectx: ESAPI, index: int) -> bool:
    try:
        handle = ectx.tr_from_tpmpublic(TPM2_HANDLE(index))
    except TSS2_Exception:
        return False
    ectx.tr_close(handle)  # an ESYS resource, not a TPM object: nothing to flush
    return True


def choose_ek(ectx: ESAPI, ek_type: str) -> EkKind:
    """The EK to use: `rsa`/`ecc` as asked, or for `auto` the one the TPM has a certificate
    for (RSA when both: an already enrolled node keeps its EK)."""
    if ek_type in EK_KINDS:
        return EK_KINDS[ek_type]
    if ek_type != "auto":
        raise ValueError(f"EK type {ek_type!r}: expected one of {', '.join(EK_TYPES)}")
    for kind in EK_KINDS.values():
        if _has_nv_index(ectx, kind.cert_index):
            return kind
    indices = ", ".join(f"0x{k.cert_index:08x} ({k.name})" for k in EK_KINDS.values())
    raise TpmError(f"no EK certificate in NV indices {indices}: the TPM must be provisioned")


class TpmSession:
    """An ESAPI context with the AK loaded; flushes what it created on close."""

    def __init__(self, ectx: ESAPI, ak_unique: bytes = b"", ek_type: str = "auto") -> None:
        self._ectx = ectx
        self._created: list[Any] = []
        self.ek_kind = choose_ek(ectx, ek_type)
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRIBUTES)
        if ak_unique:
            # A different `unique` gives a different (still deterministic) primary key.
            template.publicArea.unique.ecc.x = ak_unique[:32]
        self._ak, self._ak_public, *_ = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        self._created.append(self._ak)
        try:
            self._ek = self._load_ek()
        except BaseException:
            self.close()  # never leave the AK in one of the TPM's three object slots
            raise

    def _load_ek(self) -> Any:
        kind = self.ek_kind
        try:
            persistent = self._ectx.tr_from_tpmpublic(TPM2_HANDLE(kind.persistent_handle))
        except TSS2_Exception:
            persistent = None
        if persistent is not None:
            public, _, _ = self._ectx.read_public(persistent)
            if public.publicArea.type == kind.key_type:
                return persistent
            self._ectx.tr_close(persistent)  # another key type sits there: derive ours
        _, template = create_ek_template(kind.template, NVReadEK(self._ectx))
        ek, *_ = self._ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        self._created.append(ek)
        return ek

    def close(self) -> None:
        for handle in reversed(self._created):
            # Already gone (e.g. the TPM restarted): nothing else to free.
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(handle)
        self._created.clear()

    def identity(self) -> Identity:
        try:
            cert = NVReadEK(self._ectx)(self.ek_kind.cert_index)
        except Exception as err:  # tpm2-pytss 3.0's NoSuchIndex.__str__ itself fails
            raise TpmError(
                f"no {self.ek_kind.name.upper()} EK certificate in NV index "
                f"0x{self.ek_kind.cert_index:08x} "
                f"({type(err).__name__}): the TPM must be provisioned with one"
            ) from None
        ek_public, _, _ = self._ectx.read_public(self._ek)
        return Identity(
            ek_certificate=bytes(cert),
            ek_public=ek_public.marshal(),
            ak_public=self._ak_public.marshal(),
            ak_name=bytes(self._ak_public.get_name()),
        )

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the EK (EK auth: PolicySecret(endorsement))."""
        sess = self._ectx.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, sess)
            credential = self._ectx.activate_credential(
                self._ak,
                self._ek,
                TPM2B_ID_OBJECT(credential=credential_blob),
                TPM2B_ENCRYPTED_SECRET(secret=encrypted_secret),
                session1=ESYS_TR.PASSWORD,
                session2=sess,
            )
        except TSS2_Exception as err:
            raise TpmError(f"TPM2_ActivateCredential failed: {err}") from err
        finally:
            self._ectx.flush_context(sess)
        return bytes(credential)

    def read_pcrs(self, selection: PcrSelection) -> dict[int, bytes]:
        values: dict[int, bytes] = {}
        pending = list(selection.indices)
        while pending:
            chunk = pending[:PCR_READ_MAX]
            _, sel_out, digests = self._ectx.pcr_read(selection.tss(chunk))
            got = [d for d in digests]
            read = [i for s in sel_out for i in _selected(s)]
            if not read:
                raise TpmError(f"PCR bank {selection.bank} is not active in this TPM")
            for index, value in zip(read, got, strict=False):
                values[index] = bytes(value)
            pending = [i for i in pending if i not in values]
        return values

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> QuoteResult:
        for _ in range(QUOTE_ATTEMPTS):
            before = self.read_pcrs(selection)
            attest, signature = self._ectx.quote(self._ak, selection.tss(), qualifying_data)
            after = self.read_pcrs(selection)
            if before == after:
                return QuoteResult(bytes(attest), signature.marshal(), after)
        raise TpmError(f"PCRs kept changing during {QUOTE_ATTEMPTS} quote attempts")


def _selected(sel: Any) -> list[int]:
    bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
    return [
        byte * 8 + bit for byte in range(len(bitmap)) for bit in range(8) if bitmap[byte] >> bit & 1
    ]


@contextmanager
def session(tcti: str, ak_unique: bytes = b"", ek_type: str = "auto") -> Iterator[TpmSession]:
    """Connect to the TPM at `tcti` (e.g. `swtpm:path=/run/swtpm.sock`, `device:/dev/tpmrm0`)
    and use the EK `ek_type` (`auto`, `rsa`, `ecc`)."""
    try:
        ectx = ESAPI(tcti)
    except TSS2_Exception as err:
        raise TpmError(f"cannot connect to the TPM at {tcti!r}: {err}") from err
    try:
        tpm = TpmSession(ectx, ak_unique, ek_type)
        try:
            yield tpm
        finally:
            tpm.close()
    finally:
        ectx.close()
