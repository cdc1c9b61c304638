"""Endorsement-key certificates: the CA bundle the verifier trusts and chain checks against it.

A bundle is a PEM file of certificates: self-signed roots are the trust anchors, any other
certificate is an intermediate that must itself chain to a root of the bundle. TPM vendors
publish their EK roots and intermediates (swtpm's local CA in tests and the sandbox).

The chain walk checks, for every link, the issuer's signature (`verify_directly_issued_by`,
which also compares issuer and subject names), the validity period at `now`, and that issuers
are CAs. It deliberately ignores the EK certificate's own extensions (TCG EK certificates
carry a critical SAN with a directoryName and no CN, which TLS-oriented path validators
reject), and there is no switch to skip the check: a TPM emulator gets certificates from a
CA the platform team chose to trust, never a bypass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAX_CHAIN = 6
_MEMO_LIMIT = 100_000  # one entry per node and chain link; bounded for safety
_SHA256 = hashes.SHA256()


class BundleError(ValueError):
    """The CA bundle itself is unusable."""


@dataclass(frozen=True)
class CaBundle:
    """Trusted EK certificate authorities."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    _signatures: dict[tuple[bytes, bytes], bool] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Memo of issuer-signature checks: a pure function of the two certificates' bytes, so a
    node's EK certificate is not re-verified on every quote (validity dates still are)."""

    def issued_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        key = (cert.fingerprint(_SHA256), issuer.fingerprint(_SHA256))
        known = self._signatures.get(key)
        if known is None:
            known = _issued_by(cert, issuer)
            if len(self._signatures) < _MEMO_LIMIT:
                self._signatures[key] = known
        return known

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "CA bundle") -> CaBundle:
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError as err:
            raise BundleError(f"{source}: not a PEM bundle of certificates: {err}") from err
        roots = tuple(c for c in certs if _self_signed(c))
        if not roots:
            raise BundleError(
                f"{source}: no self-signed root certificate among {len(certs)} certificates; "
                "add the EK root CA"
            )
        return cls(roots=roots, intermediates=tuple(c for c in certs if not _self_signed(c)))

    @property
    def subjects(self) -> list[str]:
        return [c.subject.rfc4514_string() for c in (*self.roots, *self.intermediates)]


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc.isoformat()}"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain_problem(cert: x509.Certificate, bundle: CaBundle, now: datetime) -> str | None:
    """Why `cert` does not chain to a root of `bundle` at `now` (None: it does)."""
    problem = _valid_at(cert, now)
    if problem is not None:
        return f"EK certificate {problem}"
    current = cert
    pool: Sequence[x509.Certificate] = (*bundle.intermediates, *bundle.roots)
    for _ in range(MAX_CHAIN):
        candidates = [
            c for c in pool if c.subject == current.issuer and bundle.issued_by(current, c)
        ]
        if not candidates:
            return (
                f"no certificate in the CA bundle issued {current.subject.rfc4514_string()!r} "
                f"(issuer {current.issuer.rfc4514_string()!r}); trusted: {bundle.subjects}"
            )
        issuer = candidates[0]
        if not _is_ca(issuer):
            return f"issuer {issuer.subject.rfc4514_string()!r} is not a CA"
        problem = _valid_at(issuer, now)
        if problem is not None:
            return f"issuer {issuer.subject.rfc4514_string()!r} {problem}"
        if issuer in bundle.roots:
            return None
        current = issuer
    return f"chain longer than {MAX_CHAIN} certificates"


def parse_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise ValueError(f"not a DER X.509 certificate: {err}") from err


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECC {key.curve.name}"
    return type(key).__name__


def _spki(key: object) -> bytes | None:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def key_mismatch(cert: x509.Certificate, key: object) -> str | None:
    """Why the certificate's public key is not `key` (None: it is), naming both key types.

    An EK public of the other algorithm than the certificate's (an ECC EK presented with
    the RSA EK certificate, or the reverse) is reported as such, not as a bare mismatch.
    """
    cert_key = cert.public_key()
    spki = _spki(key)
    if spki is not None and spki == _spki(cert_key):
        return None
    if _kind(cert_key) != _kind(key):
        return f"the certificate holds an {_kind(cert_key)} key, the EK public is {_kind(key)}"
    return f"both are {_kind(key)} keys, but different ones"


def same_key(cert: x509.Certificate, key: object) -> bool:
    """Whether the certificate's public key is `key` (RSA or ECC)."""
    return key_mismatch(cert, key) is None
