"""Certificates and keys of the local control plane, made with `cryptography` (as envtest does).

One ECDSA P-256 CA signs the apiserver's serving certificate (SANs localhost, 127.0.0.1 and the
in-cluster service names) and every client certificate; the CA also verifies client certificates
(`--client-ca-file`). A separate key pair signs service-account tokens. Files are PEM, written
0600 under the state directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    serving: CertPair
    admin: CertPair
    front_proxy: CertPair
    sa_public: Path
    sa_private: Path
    directory: Path

    def client(self, name: str) -> CertPair:
        """A client certificate issued earlier by `issue_client` (by file name)."""
        return CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    ca: bool,
) -> x509.CertificateBuilder:
    """A certificate for `key`, valid from five minutes ago (clock skew) for VALIDITY."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, now: dt.datetime) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "sod-sandbox-ca"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sod-operator sandbox"),
            ]
        )
        cert = (
            _builder(name, name, key, now, ca=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, pair: CertPair) -> CertificateAuthority:
        key = serialization.load_pem_private_key(pair.key_pem(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, x509.load_pem_x509_certificate(pair.cert_pem()))

    def issue(
        self,
        now: dt.datetime,
        common_name: str,
        organizations: tuple[str, ...] = (),
        *,
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        server = bool(server_names or server_ips)
        builder = (
            _builder(x509.Name(attrs), self.cert.subject, key, now, ca=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def write_issued(
        self,
        directory: Path,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
    ) -> CertPair:
        pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
        _write(pair.key, _pem_key(key))
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        return pair


def issue_client(
    pki: Pki, now: dt.datetime, name: str, common_name: str, organizations: tuple[str, ...] = ()
) -> CertPair:
    """Issue a client certificate (e.g. for a node agent: CN=system:node:NAME, O=system:nodes)."""
    ca = CertificateAuthority.load(pki.ca)
    key, cert = ca.issue(now, common_name, organizations)
    return ca.write_issued(pki.directory, name, key, cert)


def create_pki(directory: Path, now: dt.datetime) -> Pki:
    """Write a fresh CA, serving certificate, admin client certificate and SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(now)
    ca_pair = CertPair(directory / "ca.crt", directory / "ca.key")
    _write(ca_pair.key, _pem_key(ca.key))
    _write(ca_pair.cert, ca.cert.public_bytes(serialization.Encoding.PEM))

    key, cert = ca.issue(
        now,
        "kube-apiserver",
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", "10.0.0.1"),
    )
    serving = ca.write_issued(directory, "apiserver", key, cert)
    key, cert = ca.issue(now, "admin", ("system:masters",))
    admin = ca.write_issued(directory, "admin", key, cert)
    key, cert = ca.issue(now, "front-proxy-client")
    front_proxy = ca.write_issued(directory, "front-proxy-client", key, cert)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write(sa_private, _pem_key(sa_key))
    _write(
        sa_public,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return Pki(ca_pair, serving, admin, front_proxy, sa_public, sa_private, directory)


def load_pki(directory: Path) -> Pki:
    return Pki(
        CertPair(directory / "ca.crt", directory / "ca.key"),
        CertPair(directory / "apiserver.crt", directory / "apiserver.key"),
        CertPair(directory / "admin.crt", directory / "admin.key"),
        CertPair(directory / "front-proxy-client.crt", directory / "front-proxy-client.key"),
        directory / "sa.pub",
        directory / "sa.key",
        directory,
    )
