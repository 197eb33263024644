"""Device tokens: JWTs whose ``sub`` is the device id (as Mender's device auth issues them)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from backend.protocol.errors import Unauthorized

# Device ids become NATS subject tokens and KV keys: no dots, wildcards or spaces.
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks device JWTs with a shared secret (HS256) or a public key (RS256/ES256/EdDSA)."""

    key: str | bytes
    algorithms: tuple[str, ...]
    leeway: float = 5.0

    @classmethod
    def from_settings(cls, secret: str | None, public_key_file: Path | None) -> TokenVerifier:
        if public_key_file is not None:
            key = public_key_file.read_bytes()
            return cls(key, algorithms_for(key, public_key_file))
        if secret:
            return cls(secret, ("HS256",))
        raise ValueError("set a JWT secret or a public key file to verify device tokens")

    def device_id(self, authorization: str | None) -> str:
        """The device id from an ``Authorization: Bearer <JWT>`` header, or Unauthorized."""
        if not authorization or not authorization[: len(BEARER)].lower() == BEARER:
            raise Unauthorized("missing 'Authorization: Bearer <token>' header")
        token = authorization[len(BEARER) :].strip()
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                leeway=self.leeway,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("device token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # PyJWTError, not only InvalidTokenError: a token naming an algorithm of another
            # key type raises InvalidKeyError; the crypto layer may raise ValueError.
            raise Unauthorized(f"invalid device token: {str(exc)[:200]}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not DEVICE_ID.fullmatch(subject):
            raise Unauthorized("token 'sub' is not a valid device id ([A-Za-z0-9_-]{1,128})")
        return subject


def algorithms_for(pem: bytes, path: Path) -> tuple[str, ...]:
    """The algorithms a public key can verify: only its own kind, so a token can never pick
    an algorithm the key was not made for."""
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key (RSA, EC P-256 or Ed25519)") from None
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "RS384", "RS512")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ("ES256",)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    raise ValueError(f"{path}: use an RSA, EC P-256 or Ed25519 public key")


def issue_device_token(device_id: str, secret: str, *, ttl: float = 7 * 86400) -> str:
    """An HS256 device token, for local stacks and tests (production keys sign elsewhere)."""
    if not DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"invalid device id {device_id!r}: use [A-Za-z0-9_-]{{1,128}}")
    now = int(time.time())
    return jwt.encode({"sub": device_id, "iat": now, "exp": now + int(ttl)}, secret, "HS256")
