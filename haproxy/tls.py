"""A local CA and a server certificate for TLS on the public port, in local and staging runs.

Devices (and tests) trust only the CA, so the server certificate can be reissued, e.g. for a
new hostname, without touching them. Files are reused while they are still valid and match
what was asked, so calling this on every start is cheap and keeps the CA stable.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=365)
SERVER_VALIDITY = datetime.timedelta(days=30)
# Reissue before expiry, so a stack started today still has valid TLS tomorrow.
RENEW_BEFORE = datetime.timedelta(days=1)
# Clocks of the machines in a staging run are not exactly in step.
BACKDATE = datetime.timedelta(minutes=5)

# File names, in the order of the LocalPki fields.
NAMES = ("ca.crt", "ca.key", "server.crt", "server.key", "server.pem")


@dataclass(frozen=True)
class LocalPki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_pem: Path
    """Certificate then key in one file: what HAProxy's ``bind ... ssl crt`` wants."""


def make_local_pki(
    directory: Path,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    server_validity: datetime.timedelta = SERVER_VALIDITY,
) -> LocalPki:
    """Write (or reuse) a CA and a server certificate for ``hostnames`` and ``ips``."""
    if not hostnames and not ips:
        raise ValueError("give at least one hostname or IP address for the server certificate")
    sans = subject_alt_names(hostnames, ips)
    directory.mkdir(parents=True, exist_ok=True)
    pki = LocalPki(*(directory / name for name in NAMES))
    ca_cert, ca_key = load_or_make_ca(pki)
    if not server_reusable(pki, ca_cert, sans):
        issue_server(pki, ca_cert, ca_key, sans, server_validity)
    return pki


def subject_alt_names(hostnames: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    """Raises ValueError for an IP address that does not parse."""
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return x509.SubjectAlternativeName(names)


def load_or_make_ca(pki: LocalPki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    loaded = load_pair(pki.ca_cert, pki.ca_key)
    if loaded is not None and valid_long_enough(loaded[0]):
        return loaded
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetharness local CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        certificate_builder(name, name, key, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_pair(pki.ca_cert, pki.ca_key, cert, key)
    return cert, key


def issue_server(
    pki: LocalPki,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: x509.SubjectAlternativeName,
    validity: datetime.timedelta,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = str(sans[0].value)  # shown in tools; clients check the SANs only
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        certificate_builder(subject, ca_cert.subject, key, validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(sans, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_pair(pki.server_cert, pki.server_key, cert, key)
    write_file(pki.server_pem, pem(cert) + key_pem(key), private=True)


def certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    validity: datetime.timedelta,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
    )


def key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def server_reusable(
    pki: LocalPki, ca_cert: x509.Certificate, sans: x509.SubjectAlternativeName
) -> bool:
    """The server files exist, were signed by this CA, name exactly ``sans`` and stay valid."""
    loaded = load_pair(pki.server_cert, pki.server_key)
    if loaded is None or not pki.server_pem.exists():
        return False
    cert = loaded[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
        current = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(current) == set(sans) and valid_long_enough(cert)


def valid_long_enough(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE


def load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key, or None if either is missing, unreadable or they differ."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_file(key_path, key_pem(key), private=True)
    write_file(cert_path, pem(cert), private=False)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, private: bool) -> None:
    """Atomically, so a reader never sees half a file; keys are created 0600, never wider."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
