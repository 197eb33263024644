"""Device tokens: JWTs whose ``sub`` is the device id (as Mender's device auth issues them)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

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
            return cls(public_key_file.read_bytes(), ("RS256", "ES256", "EdDSA"))
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
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid device token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not DEVICE_ID.fullmatch(subject):
            raise Unauthorized("token 'sub' is not a valid device id ([A-Za-z0-9_-]{1,128})")
        return subject


def issue_device_token(device_id: str, secret: str, *, ttl: float = 7 * 86400) -> str:
    """An HS256 device token, for local stacks and tests (production keys sign elsewhere)."""
    if not DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"invalid device id {device_id!r}: use [A-Za-z0-9_-]{{1,128}}")
    now = int(time.time())
    return jwt.encode({"sub": device_id, "iat": now, "exp": now + int(ttl)}, secret, "HS256")
