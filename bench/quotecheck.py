"""Our quote check and Keylime's, side by side on the same swtpm evidence (issue 15, item 3).

Both verifiers get the same bytes: the TPMS_ATTEST the TPM signed, its TPMT_SIGNATURE, the AK's
TPM2B_PUBLIC and the reported PCR values of one `NodeAttestation.spec.tpm.quote`.

* Ours: `sod_operator.attestation.verify.check_quote` (after parsing the AK, as the verifier
  does): signature in the AK's fixed scheme, TPM-generated quote, nonce, extraData =
  H(nonce || claims), PCR selection, PCR digest.
* Keylime: what `keylime.tpm.tpm_main.Tpm._tpm2_checkquote` runs first in `Tpm.check_quote`:
  `tpm2_objects.pubkey_from_tpm2b_public` (the AK to PEM), then `tpm_util.checkquote`
  (signature, extraData equal to the expected nonce, PCR digest of the reported values).
  `tpm_main` itself is not imported: its module imports `keylime.signing`, which needs the
  GPGME bindings (`gpg`), and those do not build from PyPI on Python 3.11 here (see
  `missing`).

Two things are adapted, and only in the format, never in the check:
* Keylime compares extraData with the nonce itself; our agent quotes over H(nonce || claims)
  (`qualifying_data`), so Keylime is given that value as the nonce it expects.
* Keylime reads the PCR values in tpm2-tools' `-o pcrs` file layout (a TPML_PCR_SELECTION
  and TPML_DIGESTs as the C structures lie in memory, little-endian); `pcr_blob` writes the
  reported values in that layout, from the selection the quote itself names.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEYLIME_VERSION = "7.14.3"
"""The version whose modules are called here (Keylime's Python API is not stable)."""

PCR_SELECT_MAX = 3
"""sizeofSelect of tpm2-tools' pcrs file: 24 PCRs (Keylime accepts 0 or 3)."""
TPMS_PCR_SELECTION_SIZE = 8
"""hash (2) + sizeofSelect (1) + pcrSelect[4] (4) + 1 byte of padding, as in memory."""
TPML_DIGEST_SLOTS = 8
TPM2B_DIGEST_SIZE = 2 + 64


def missing() -> str | None:
    """Why Keylime's quote check cannot run here (None: it can)."""
    try:
        import keylime  # noqa: F401
        from keylime.tpm import tpm2_objects, tpm_util  # noqa: F401
    except ImportError as err:
        return f"keylime=={KEYLIME_VERSION} is not importable ({err}); it is in the dev extra"
    from importlib import metadata

    have = metadata.version("keylime")
    if have != KEYLIME_VERSION:
        return f"keylime {have} is installed, this comparison is written for {KEYLIME_VERSION}"
    return None


@dataclass(frozen=True)
class Case:
    """One piece of evidence as both verifiers see it."""

    name: str
    evidence: Any
    """`TpmEvidence` (with its quote)."""
    claims: Any
    challenge: Any
    """The `Challenge` the verifier holds (its nonce is the one expected)."""
    ak_public: str
    """The AK the verifier enrolled (TPM2B_PUBLIC, base64): the key the quote must verify with."""
    genuine: bool


def pcr_blob(attest: bytes, pcrs: dict[int, bytes]) -> bytes:
    """The reported PCR values in tpm2-tools' pcrs file layout, for the quote's selection."""
    from sod_operator.attestation import tpm

    info = tpm.parse_quote(attest)
    selection = b""
    values: list[bytes] = []
    for sel in info.pcr_select:
        bitmap = 0
        for i in sel.indices:
            bitmap |= 1 << i
            values.append(pcrs.get(i, b""))
        selection += struct.pack("<HB", sel.hash_alg, PCR_SELECT_MAX)
        selection += bitmap.to_bytes(4, "little") + b"\x00"
    selection += b"\x00" * TPMS_PCR_SELECTION_SIZE * (16 - len(info.pcr_select))
    digests = b""
    chunks = [values[i : i + TPML_DIGEST_SLOTS] for i in range(0, len(values), TPML_DIGEST_SLOTS)]
    for chunk in chunks:
        digests += struct.pack("<I", len(chunk))
        for slot in range(TPML_DIGEST_SLOTS):
            value = chunk[slot] if slot < len(chunk) else b""
            digests += struct.pack("<H", len(value)) + value.ljust(64, b"\x00")
    return (
        struct.pack("<I", len(info.pcr_select))
        + selection
        + struct.pack("<I", len(chunks))
        + (digests)
    )


def keylime_inputs(case: Case) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(AK TPM2B_PUBLIC, nonce Keylime expects, sigblob, quoteblob, pcrblob)."""
    from sod_operator.api.v1alpha1.nodeattestation import qualifying_data

    quote = case.evidence.quote
    attest = base64.b64decode(quote.attest)
    pcrs = {p.index: bytes.fromhex(p.value) for p in quote.pcrs}
    return (
        base64.b64decode(case.ak_public),
        qualifying_data(bytes.fromhex(case.challenge.nonce), case.claims),
        base64.b64decode(quote.signature),
        attest,
        pcr_blob(attest, pcrs),
    )


def keylime_check(inputs: tuple[bytes, bytes, bytes, bytes, bytes]) -> str | None:
    """Keylime's verdict: None if it accepts the quote, else its error."""
    from cryptography.hazmat.primitives import serialization
    from keylime.tpm import tpm2_objects, tpm_util

    ak, nonce, sig, attest, pcrs = inputs
    try:
        pem = tpm2_objects.pubkey_from_tpm2b_public(ak).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tpm_util.checkquote(pem, nonce, sig, attest, pcrs, "sha256")  # type: ignore[arg-type]
    except Exception as err:  # Keylime signals every rejection with an exception
        return f"{type(err).__name__}: {err}".rstrip(": ")
    return None


def our_check(case: Case) -> str | None:
    """Our verdict: None if `check_quote` accepts the quote, else the reason."""
    from sod_operator.attestation import tpm, verify

    try:
        ak = tpm.parse_tpm2b_public(base64.b64decode(case.ak_public), "AK")
    except tpm.TpmFormatError as err:
        return str(err)
    out = verify.check_quote(case.evidence, case.claims, ak, case.challenge)
    if isinstance(out, verify.Failure):
        return f"{out.reason}: {out.message}"
    return None


def claims_binding(case: Case) -> bytes:
    """The part of our check Keylime's has no counterpart for: the expected extraData."""
    from sod_operator.api.v1alpha1.nodeattestation import qualifying_data

    return qualifying_data(bytes.fromhex(case.challenge.nonce), case.claims)


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tampered(genuine: Case, other_ak_public: str, other_nonce: str) -> list[Case]:
    """The genuine quote altered in the four ways an attacker (or a bug) would."""
    quote = genuine.evidence.quote

    def with_quote(name: str, **changes: Any) -> Case:
        ev = genuine.evidence.model_copy(update={"quote": quote.model_copy(update=changes)})
        return dataclasses.replace(genuine, name=name, evidence=ev, genuine=False)

    sig = base64.b64decode(quote.signature)
    first = quote.pcrs[0]
    pcrs = [first.model_copy(update={"value": _flip_last(bytes.fromhex(first.value)).hex()})]
    return [
        with_quote("tampered signature", signature=_b64(_flip_last(sig))),
        with_quote("tampered PCR value", pcrs=pcrs + list(quote.pcrs[1:])),
        # A replayed quote relabelled with the current nonce: only the signed extraData tells.
        dataclasses.replace(
            with_quote("wrong nonce", nonce=other_nonce),
            challenge=genuine.challenge.model_copy(update={"nonce": other_nonce}),
        ),
        dataclasses.replace(genuine, name="other AK", ak_public=other_ak_public, genuine=False),
    ]


@dataclass(frozen=True)
class Verdicts:
    case: str
    genuine: bool
    ours: str | None
    keylime: str | None

    @property
    def agree(self) -> bool:
        return (self.ours is None) == (self.keylime is None)

    @property
    def correct(self) -> bool:
        return self.agree and (self.ours is None) == self.genuine


def compare(cases: list[Case]) -> list[Verdicts]:
    return [
        Verdicts(c.name, c.genuine, our_check(c), keylime_check(keylime_inputs(c))) for c in cases
    ]


def time_each(fn: Callable[[], object]) -> float:
    """Wall-clock milliseconds of one call."""
    import time

    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000
