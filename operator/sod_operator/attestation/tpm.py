"""TPM 2.0 structures the verifier parses itself, and the verifier's side of MakeCredential.

Pure: standard library + `cryptography` only (no tpm2-pytss on the verifier side). Covers
TPM2B_PUBLIC / TPMT_PUBLIC (RSA and ECC keys), object Names, TPMS_ATTEST of a quote,
TPMT_SIGNATURE (RSASSA, RSAPSS, ECDSA), KDFa, KDFe and MakeCredential for RSA and ECC
(NIST P-256) endorsement keys. Layouts follow the TPM 2.0 Library specification, Part 2
(structures) and Part 1 §11.4.10 (KDFa, KDFe), §24 (credential protection), Annex B.10 / C.6
(RSA-OAEP and ECDH secret sharing). Anything malformed raises `TpmFormatError` with what
was wrong and where; the caller turns it into a rejection reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 moved CFB to the "decrepit" package; TPM credential blobs need it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018


class TpmFormatError(ValueError):
    """A TPM structure could not be parsed."""


class Alg(IntEnum):
    """TPM_ALG_ID values used here."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    ECSCHNORR = 0x001C
    ECC = 0x0023
    CFB = 0x0043


class ObjectAttributes(IntFlag):
    """TPMA_OBJECT bits."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18


HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}
_HASHLIB: Final[dict[int, str]] = {
    Alg.SHA1: "sha1",
    Alg.SHA256: "sha256",
    Alg.SHA384: "sha384",
    Alg.SHA512: "sha512",
}
_CURVES: Final[dict[int, type[ec.EllipticCurve]]] = {
    0x0003: ec.SECP256R1,
    0x0004: ec.SECP384R1,
    0x0005: ec.SECP521R1,
}
EK_CURVES: Final = frozenset({ec.SECP256R1.name})
"""Curves of ECC EKs this verifier encrypts credentials to: the TCG low-range L-2 template
(NIST P-256, AES-128-CFB, SHA-256, policy A) the node-agent derives and uses."""
_SCHEMES_WITH_HASH: Final = {Alg.RSASSA, Alg.RSAPSS, Alg.ECDSA, Alg.OAEP, Alg.ECDH, Alg.ECSCHNORR}


def digest(alg: int, data: bytes) -> bytes:
    """H_alg(data) for a TPM hash algorithm."""
    name = _HASHLIB.get(alg)
    if name is None:
        raise TpmFormatError(f"unsupported hash algorithm 0x{alg:04x}")
    return hashlib.new(name, data).digest()


def digest_size(alg: int) -> int:
    return len(digest(alg, b""))


class _Reader:
    """A cursor over a TPM byte string (big-endian, as the TPM marshals)."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def _take(self, n: int, field: str) -> bytes:
        if self._pos + n > len(self._data):
            raise TpmFormatError(
                f"{self._what}: truncated at {field} (offset {self._pos}, need {n} bytes, "
                f"have {len(self._data) - self._pos})"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field: str) -> int:
        return int(self._take(1, field)[0])

    def u16(self, field: str) -> int:
        value: int = struct.unpack(">H", self._take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack(">I", self._take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = struct.unpack(">Q", self._take(8, field))[0]
        return value

    def tpm2b(self, field: str) -> bytes:
        return self._take(self.u16(f"{field}.size"), field)

    def raw(self, n: int, field: str) -> bytes:
        return self._take(n, field)

    @property
    def offset(self) -> int:
        return self._pos

    def done(self) -> None:
        if self._pos != len(self._data):
            raise TpmFormatError(
                f"{self._what}: {len(self._data) - self._pos} trailing bytes after the structure"
            )


# --------------------------------------------------------------------------- public areas


@dataclass(frozen=True)
class PublicArea:
    """A parsed TPMT_PUBLIC (RSA or ECC)."""

    type: int
    name_alg: int
    attributes: ObjectAttributes
    symmetric: tuple[int, int, int] | None
    """(algorithm, keyBits, mode) of a storage key's symmetric definition, None if TPM_ALG_NULL."""
    scheme: int
    scheme_hash: int | None
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    tpmt_bytes: bytes
    """The marshaled TPMT_PUBLIC, from which the Name is computed."""

    @property
    def name(self) -> bytes:
        """The TPM Name: nameAlg (u16) ‖ H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", self.name_alg) + digest(self.name_alg, self.tpmt_bytes)

    def has(self, flags: ObjectAttributes) -> bool:
        return (self.attributes & flags) == flags


def parse_tpm2b_public(data: bytes, what: str = "TPM2B_PUBLIC") -> PublicArea:
    """Parse a TPM2B_PUBLIC (u16 size ‖ TPMT_PUBLIC)."""
    outer = _Reader(data, what)
    inner = outer.tpm2b("publicArea")
    outer.done()
    return parse_tpmt_public(inner, what)


def parse_tpmt_public(data: bytes, what: str = "TPMT_PUBLIC") -> PublicArea:
    r = _Reader(data, what)
    obj_type = r.u16("type")
    name_alg = r.u16("nameAlg")
    if name_alg not in _HASHLIB:
        raise TpmFormatError(f"{what}: unsupported nameAlg 0x{name_alg:04x}")
    attributes = ObjectAttributes(r.u32("objectAttributes"))
    r.tpm2b("authPolicy")
    sym_alg = r.u16("parameters.symmetric.algorithm")
    symmetric: tuple[int, int, int] | None = None
    if sym_alg != Alg.NULL:
        symmetric = (sym_alg, r.u16("symmetric.keyBits"), r.u16("symmetric.mode"))
    scheme = r.u16("parameters.scheme.scheme")
    scheme_hash: int | None = None
    if scheme in _SCHEMES_WITH_HASH:
        scheme_hash = r.u16("parameters.scheme.hashAlg")
    elif scheme != Alg.NULL:
        raise TpmFormatError(f"{what}: unsupported scheme 0x{scheme:04x}")
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if obj_type == Alg.RSA:
        key_bits = r.u16("parameters.keyBits")
        exponent = r.u32("parameters.exponent") or 65537
        modulus = r.tpm2b("unique.rsa")
        if len(modulus) * 8 != key_bits:
            raise TpmFormatError(f"{what}: RSA modulus has {len(modulus) * 8} bits, not {key_bits}")
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    elif obj_type == Alg.ECC:
        curve_id = r.u16("parameters.curveID")
        kdf = r.u16("parameters.kdf.scheme")
        if kdf != Alg.NULL:
            r.u16("parameters.kdf.hashAlg")
        x = r.tpm2b("unique.ecc.x")
        y = r.tpm2b("unique.ecc.y")
        curve = _CURVES.get(curve_id)
        if curve is None:
            raise TpmFormatError(f"{what}: unsupported ECC curve 0x{curve_id:04x}")
        try:
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            ).public_key()
        except ValueError as err:
            raise TpmFormatError(f"{what}: ECC point is not on the curve: {err}") from err
    else:
        raise TpmFormatError(f"{what}: unsupported key type 0x{obj_type:04x}")
    r.done()
    return PublicArea(
        type=obj_type,
        name_alg=name_alg,
        attributes=attributes,
        symmetric=symmetric,
        scheme=scheme,
        scheme_hash=scheme_hash,
        public_key=key,
        tpmt_bytes=data,
    )


AK_REQUIRED: Final = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN_ENCRYPT
)
EK_REQUIRED: Final = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT
)


def ak_problem(ak: PublicArea) -> str | None:
    """Why `ak` is not a restricted, TPM-resident signing key with a fixed scheme (None: fine).

    Restricted signing keys only sign digests the TPM computed itself (it refuses to sign
    data that starts with TPM_GENERATED_VALUE), so a quote signed by one cannot be forged.
    """
    missing = AK_REQUIRED & ~ak.attributes
    if missing:
        return f"attributes 0x{int(ak.attributes):08x} lack {missing!r}"
    if ak.attributes & ObjectAttributes.DECRYPT:
        return f"attributes 0x{int(ak.attributes):08x} include decrypt"
    if ak.scheme not in (Alg.RSASSA, Alg.RSAPSS, Alg.ECDSA) or ak.scheme_hash not in HASHES:
        return f"signing scheme 0x{ak.scheme:04x} is not a fixed RSASSA/RSAPSS/ECDSA scheme"
    return None


def key_kind(key: PublicArea) -> str:
    """A short human name of the key type, e.g. `RSA-2048` or `ECC secp256r1`."""
    pub = key.public_key
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA-{pub.key_size}"
    return f"ECC {pub.curve.name}"


def ek_problem(ek: PublicArea) -> str | None:
    """Why `ek` cannot receive a credential from this verifier (None: fine)."""
    missing = EK_REQUIRED & ~ek.attributes
    if missing:
        return f"attributes 0x{int(ek.attributes):08x} lack {missing!r}"
    if ek.attributes & ObjectAttributes.SIGN_ENCRYPT:
        return f"attributes 0x{int(ek.attributes):08x} include sign"
    pub = ek.public_key
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name not in EK_CURVES:
        return f"ECC curve {pub.curve.name} is not supported for EKs (NIST P-256 is)"
    if ek.symmetric is None or ek.symmetric[0] != Alg.AES or ek.symmetric[2] != Alg.CFB:
        return f"symmetric definition {ek.symmetric!r} is not AES-CFB"
    return None


# --------------------------------------------------------------------------- quote


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the selected PCR indices (ascending)."""

    hash_alg: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class QuoteInfo:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_quote(data: bytes) -> QuoteInfo:
    """Parse TPMS_ATTEST bytes and require a TPM-generated quote with nothing after it."""
    r = _Reader(data, "TPMS_ATTEST")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise TpmFormatError(f"TPMS_ATTEST: magic 0x{magic:08x} is not TPM_GENERATED_VALUE")
    st = r.u16("type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise TpmFormatError(f"TPMS_ATTEST: type 0x{st:04x} is not TPM_ST_ATTEST_QUOTE")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock = r.u64("clockInfo.clock")
    reset_count = r.u32("clockInfo.resetCount")
    restart_count = r.u32("clockInfo.restartCount")
    safe = r.u8("clockInfo.safe") == 1
    firmware = r.u64("firmwareVersion")
    count = r.u32("pcrSelect.count")
    if count > 16:
        raise TpmFormatError(f"TPMS_ATTEST: {count} PCR selections is more than a TPM has banks")
    selections = []
    for i in range(count):
        alg = r.u16(f"pcrSelect[{i}].hash")
        size = r.u8(f"pcrSelect[{i}].sizeofSelect")
        bitmap = r.raw(size, f"pcrSelect[{i}].pcrSelect")
        indices = tuple(
            byte * 8 + bit for byte in range(size) for bit in range(8) if bitmap[byte] >> bit & 1
        )
        selections.append(PcrSelection(alg, indices))
    pcr_digest = r.tpm2b("pcrDigest")
    r.done()
    return QuoteInfo(
        qualified_signer=signer,
        extra_data=extra,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=safe,
        firmware_version=firmware,
        pcr_select=tuple(selections),
        pcr_digest=pcr_digest,
    )


@dataclass(frozen=True)
class Signature:
    """A parsed TPMT_SIGNATURE."""

    alg: int
    hash_alg: int
    value: bytes
    """DER (ECDSA) or the raw RSA signature."""


def parse_signature(data: bytes) -> Signature:
    r = _Reader(data, "TPMT_SIGNATURE")
    alg = r.u16("sigAlg")
    if alg in (Alg.RSASSA, Alg.RSAPSS):
        hash_alg = r.u16("signature.hash")
        value = r.tpm2b("signature.sig")
    elif alg == Alg.ECDSA:
        hash_alg = r.u16("signature.hash")
        sig_r = int.from_bytes(r.tpm2b("signature.signatureR"), "big")
        sig_s = int.from_bytes(r.tpm2b("signature.signatureS"), "big")
        value = encode_dss_signature(sig_r, sig_s)
    else:
        raise TpmFormatError(f"TPMT_SIGNATURE: unsupported signature algorithm 0x{alg:04x}")
    r.done()
    return Signature(alg, hash_alg, value)


def signature_problem(key: PublicArea, sig: Signature, message: bytes) -> str | None:
    """Why `sig` is not `key`'s signature over `message` in the key's fixed scheme (None: valid)."""
    if sig.alg != key.scheme or sig.hash_alg != key.scheme_hash:
        return (
            f"signature scheme 0x{sig.alg:04x}/0x{sig.hash_alg:04x} differs from the key's "
            f"fixed scheme 0x{key.scheme:04x}/0x{key.scheme_hash or 0:04x}"
        )
    hash_cls = HASHES.get(sig.hash_alg)
    if hash_cls is None:
        return f"unsupported signature hash 0x{sig.hash_alg:04x}"
    pub = key.public_key
    try:
        if sig.alg == Alg.ECDSA and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig.value, message, ec.ECDSA(hash_cls()))
        elif sig.alg == Alg.RSASSA and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig.value, message, padding.PKCS1v15(), hash_cls())
        elif sig.alg == Alg.RSAPSS and isinstance(pub, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO)
            pub.verify(sig.value, message, pss, hash_cls())
        else:
            return f"signature algorithm 0x{sig.alg:04x} does not fit the key type"
    except InvalidSignature:
        return "the signature does not verify with the attestation key"
    return None


def pcr_digest(hash_alg: int, values: list[bytes]) -> bytes:
    """The quote's pcrDigest: H(PCR values concatenated in selection order)."""
    return digest(hash_alg, b"".join(values))


# --------------------------------------------------------------------------- MakeCredential


def kdfa(
    hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa (SP 800-108 counter mode with HMAC), TPM 2.0 Part 1 §11.4.10.2."""
    name = _HASHLIB[hash_alg]
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(
            key,
            struct.pack(">I", counter)
            + label
            + b"\x00"
            + context_u
            + context_v
            + struct.pack(">I", bits),
            name,
        ).digest()
    return out[: (bits + 7) // 8]


def kdfe(hash_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (SP 800-56A concatenation KDF), TPM 2.0 Part 1 §11.4.10.3.

    H(counter ‖ Z ‖ label ‖ 0x00 ‖ PartyUInfo ‖ PartyVInfo), counter from 1, concatenated
    until `bits` are produced.
    """
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        block = struct.pack(">I", counter) + z + label + b"\x00" + party_u + party_v
        out += digest(hash_alg, block)
    return out[: (bits + 7) // 8]


@dataclass(frozen=True)
class CredentialChallenge:
    """What TPM2_ActivateCredential needs: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents."""

    credential_blob: bytes
    encrypted_secret: bytes


def randomness_size(ek: PublicArea) -> int:
    """How many random bytes `make_credential` needs for `ek`.

    RSA: the seed itself (the nameAlg's digest size). ECC: an ephemeral private scalar, drawn
    with 64 extra bits so reducing it modulo the curve order has no usable bias (FIPS 186-5
    A.4.1).
    """
    pub = ek.public_key
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return (pub.curve.key_size + 7) // 8 + 8
    return digest_size(ek.name_alg)


def _coordinate(value: int, curve: ec.EllipticCurve) -> bytes:
    return value.to_bytes((curve.key_size + 7) // 8, "big")


def _ecdh_seed(
    ek: PublicArea, pub: ec.EllipticCurvePublicKey, randomness: bytes
) -> tuple[bytes, bytes]:
    """(seed, TPMS_ECC_POINT of the ephemeral key): ECDH secret sharing, Part 1 Annex C.6.4.

    The TPM recomputes Z = x(d_EK · Q_e) and the same seed = KDFe(nameAlg, Z, "IDENTITY",
    x(Q_e), x(Q_EK)); only the holder of the EK private key can.
    """
    curve = pub.curve
    order = _ORDERS[curve.name]
    scalar = int.from_bytes(randomness, "big") % (order - 1) + 1
    ephemeral = ec.derive_private_key(scalar, curve)
    z = ephemeral.exchange(ec.ECDH(), pub)  # the x coordinate, fixed length
    q_e = ephemeral.public_key().public_numbers()
    q_ek = pub.public_numbers()
    e_x, e_y = _coordinate(q_e.x, curve), _coordinate(q_e.y, curve)
    seed = kdfe(
        ek.name_alg,
        z,
        b"IDENTITY",
        e_x,
        _coordinate(q_ek.x, curve),
        digest_size(ek.name_alg) * 8,
    )
    point = struct.pack(">H", len(e_x)) + e_x + struct.pack(">H", len(e_y)) + e_y
    return seed, point


_ORDERS: Final[dict[str, int]] = {
    ec.SECP256R1.name: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}


def _seed_and_secret(ek: PublicArea, randomness: bytes) -> tuple[bytes, bytes]:
    """The credential seed and how it travels to the TPM (RSA-OAEP or an ECDH point)."""
    pub = ek.public_key
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return _ecdh_seed(ek, pub, randomness)
    hash_cls = HASHES[ek.name_alg]
    oaep = padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=b"IDENTITY\x00")
    return randomness, pub.encrypt(randomness, oaep)


def make_credential(
    ek: PublicArea, object_name: bytes, credential: bytes, randomness: bytes
) -> CredentialChallenge:
    """TPM2_MakeCredential in software for an RSA or ECC EK (TPM 2.0 Part 1 §24, Part 3 §12.6).

    Only the TPM holding the EK's private key, with an object named `object_name` loaded,
    recovers `credential`. `randomness` is fresh, `randomness_size(ek)` bytes: the seed
    (RSA) or the ephemeral ECDH key (ECC).
    """
    problem = ek_problem(ek)
    if problem is not None:
        raise TpmFormatError(f"EK: {problem}")
    if ek.symmetric is None:
        raise TpmFormatError("EK: not a storage key")
    size = digest_size(ek.name_alg)
    if len(randomness) != randomness_size(ek):
        raise ValueError(f"randomness must be {randomness_size(ek)} bytes")
    if not 0 < len(credential) <= size:
        raise ValueError(f"credential must be 1..{size} bytes")
    seed, secret = _seed_and_secret(ek, randomness)
    sym_key = kdfa(ek.name_alg, seed, b"STORAGE", object_name, b"", ek.symmetric[1])
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\x00" * 16)).encryptor()
    enc_identity = (
        encryptor.update(struct.pack(">H", len(credential)) + credential) + encryptor.finalize()
    )
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", size * 8)
    outer_hmac = hmac.new(hmac_key, enc_identity + object_name, _HASHLIB[ek.name_alg]).digest()
    blob = struct.pack(">H", len(outer_hmac)) + outer_hmac + enc_identity
    return CredentialChallenge(credential_blob=blob, encrypted_secret=secret)
