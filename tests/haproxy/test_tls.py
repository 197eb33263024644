"""The local PKI: real TLS handshakes against the generated certificate, trusting only the CA."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy.tls import LocalPki, make_local_pki

pytestmark = pytest.mark.integration  # every test here runs real servers


@contextlib.contextmanager
def tls_server(pem: Path) -> Iterator[int]:
    """A TLS server on a free port that answers each handshake with b"ok"; yields the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def handshake(port: int, server_hostname: str, cafile: Path | None) -> bytes:
    context = ssl.create_default_context(cafile=cafile)
    # What Python 3.13 enables by default: the certificates must also satisfy RFC 5280.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(2)


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return make_local_pki(tmp_path / "pki", hostnames=("localhost", "gw.staging.test"))


@pytest.mark.parametrize("server_hostname", ["localhost", "gw.staging.test", "127.0.0.1"])
def test_a_client_trusting_only_the_ca_verifies_the_server(
    pki: LocalPki, server_hostname: str
) -> None:
    with tls_server(pki.server_pem) as port:
        assert handshake(port, server_hostname, pki.ca_cert) == b"ok"


def test_a_name_not_in_the_certificate_fails_verification(pki: LocalPki) -> None:
    with tls_server(pki.server_pem) as port, pytest.raises(ssl.SSLCertVerificationError) as err:
        handshake(port, "other.example", pki.ca_cert)
    assert "Hostname mismatch" in str(err.value)


def test_without_the_ca_the_certificate_is_not_trusted(pki: LocalPki) -> None:
    with tls_server(pki.server_pem) as port, pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, "localhost", cafile=None)


def test_private_keys_are_readable_by_the_owner_only(pki: LocalPki) -> None:
    for path in (pki.ca_key, pki.server_key, pki.server_pem):
        assert path.stat().st_mode & 0o777 == 0o600
    assert pki.server_pem.read_text().count("-----BEGIN") == 2  # certificate and key


def test_valid_files_are_reused(pki: LocalPki) -> None:
    before = {path: path.read_bytes() for path in vars(pki).values()}
    again = make_local_pki(pki.ca_cert.parent, hostnames=("localhost", "gw.staging.test"))
    assert again == pki
    assert {path: path.read_bytes() for path in vars(again).values()} == before


def test_new_names_reissue_the_server_certificate_under_the_same_ca(pki: LocalPki) -> None:
    ca, server = pki.ca_cert.read_bytes(), pki.server_cert.read_bytes()
    make_local_pki(pki.ca_cert.parent, hostnames=("edge.staging.test",), ips=())
    assert pki.ca_cert.read_bytes() == ca
    assert pki.server_cert.read_bytes() != server
    with tls_server(pki.server_pem) as port:
        assert handshake(port, "edge.staging.test", pki.ca_cert) == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(port, "127.0.0.1", pki.ca_cert)


def test_a_certificate_about_to_expire_is_reissued(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path, server_validity=datetime.timedelta(hours=1))
    server = pki.server_cert.read_bytes()
    make_local_pki(tmp_path)
    assert pki.server_cert.read_bytes() != server


def test_damaged_files_are_replaced(pki: LocalPki) -> None:
    pki.ca_key.write_text("not a key")
    make_local_pki(pki.ca_cert.parent)
    with tls_server(pki.server_pem) as port:
        assert handshake(port, "localhost", pki.ca_cert) == b"ok"


@pytest.mark.parametrize(
    ("hostnames", "ips", "message"),
    [
        ((), (), "at least one hostname or IP address"),
        (("localhost",), ("localhost",), "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_bad_names_are_refused(
    tmp_path: Path, hostnames: tuple[str, ...], ips: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_local_pki(tmp_path, hostnames, ips)
