from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from backend.bus.auth import TokenVerifier, issue_device_token
from backend.protocol.errors import Unauthorized

SECRET = "a-test-secret-of-at-least-32-bytes-long"
CLAIMS = {"sub": "gw-7", "exp": 2**40}


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_valid_token_gives_the_device_id() -> None:
    verifier = TokenVerifier.from_settings(SECRET, None)
    assert verifier.device_id(bearer(issue_device_token("gw-1", SECRET))) == "gw-1"
    assert verifier.device_id("bearer " + issue_device_token("gw-1", SECRET)) == "gw-1"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing"),
        ("Basic Zm9vOmJhcg==", "missing"),
        ("Bearer not-a-jwt", "invalid device token"),
        (
            bearer(issue_device_token("gw-1", "another-test-secret-at-least-32-bytes")),
            "invalid device token",
        ),
        (bearer(issue_device_token("gw-1", SECRET, ttl=-60)), "expired"),
        (bearer(jwt.encode({"sub": "gw-1"}, SECRET, "HS256")), "invalid device token"),
        (bearer(jwt.encode({"sub": "a.b", "exp": 2**40}, SECRET, "HS256")), "not a valid"),
        (bearer(jwt.encode({"sub": "gw", "exp": 2**40}, SECRET * 2, "HS512")), "invalid"),
    ],
)
def test_bad_tokens_are_unauthorized(header: str | None, message: str) -> None:
    verifier = TokenVerifier.from_settings(SECRET, None)
    with pytest.raises(Unauthorized, match=message):
        verifier.device_id(header)


def test_public_key_verification(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    verifier = TokenVerifier.from_settings(None, tmp_path / "pub.pem")
    token = jwt.encode({"sub": "gw-9", "exp": 2**40}, key, "ES256")
    assert verifier.device_id(bearer(token)) == "gw-9"
    with pytest.raises(Unauthorized):
        verifier.device_id(bearer(issue_device_token("gw-9", SECRET)))  # HS256 not accepted


def test_no_key_configured_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="JWT secret or a public key"):
        TokenVerifier.from_settings(None, None)


def test_issue_rejects_bad_device_ids() -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        issue_device_token("has space", SECRET)


def public_key_file(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "pub.pem"
    path.write_bytes(pem)
    return path


def test_a_key_verifies_only_its_own_algorithms(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier.from_settings(None, public_key_file(tmp_path, rsa_key))
    assert verifier.algorithms == ("RS256", "RS384", "RS512")
    assert verifier.device_id(bearer(jwt.encode(CLAIMS, rsa_key, "RS256"))) == "gw-7"


@pytest.mark.parametrize(
    "token",
    [
        # An ES256 token against an RSA key raised InvalidKeyError past the shard: no answer.
        jwt.encode(CLAIMS, ec.generate_private_key(ec.SECP256R1()), "ES256"),
        jwt.encode(CLAIMS, SECRET, "HS256"),
        jwt.encode(CLAIMS, None, "none"),
        "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",  # a header and claims, a short signature
        "a.b.c",
        "....",
    ],
    ids=["es256", "hs256", "none", "short-signature", "not-base64", "dots"],
)
def test_every_token_case_is_unauthorized_with_a_public_key(tmp_path: Path, token: str) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier.from_settings(None, public_key_file(tmp_path, rsa_key))
    with pytest.raises(Unauthorized, match="invalid device token"):
        verifier.device_id(bearer(token))


def test_a_file_that_is_not_a_public_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pub.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM public key"):
        TokenVerifier.from_settings(None, tmp_path / "pub.pem")
