"""One configuration object for the operator side: the fleet state service and the HTTP API."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backend.bus.subjects import check_replicas


def default_instance_id() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


def token_digest(token: str) -> str:
    """Tokens are looked up by digest: no secret is compared byte by byte (timing)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_operator_tokens(path: Path) -> dict[str, str]:
    """A JSON object ``{"<token>": "<operator id>", ...}``, the file operators' tokens live in."""
    tokens = json.loads(path.read_text())
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in tokens.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of token -> operator id strings")
    return tokens


@dataclass(slots=True)
class FleetConfig:
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream_replicas: int = 1
    """Copies of each stream and KV bucket: the same count as the shards are given."""
    nats_credentials: Path | None = None
    """This role's nkey seed file (``backend.bus.natsauth``: api or state); None: none."""
    nats_ca_file: Path | None = None
    """The CA to verify NATS' TLS certificate with; None: the system's, if TLS is used."""
    instance_id: str = field(default_factory=default_instance_id)

    # --- operator API ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8090
    operator_tokens: dict[str, str] = field(default_factory=dict)
    """Bearer token -> operator id; the id is stamped as ``user_id`` on what operators send."""
    command_timeout: float = 10.0
    """Default deadline of a command when the request names none."""
    max_command_timeout: float = 300.0
    max_output_bytes: int = 64 * 1024
    """Command output beyond this is cut, with a marker saying how much was left out."""
    max_body_bytes: int = 64 * 1024
    page_limit: int = 100
    max_page_limit: int = 1000
    max_page_scan: int = 5000
    """Device entries one filtered page reads at most; the cursor resumes after them."""
    shell_idle_timeout: float = 900.0
    """A shell session with no bytes either way for this long is closed."""
    shell_start_timeout: float = 10.0
    """How long the device gets to answer a shell "new" before the API gives up (504)."""
    forward_idle_timeout: float = 600.0
    """A port forward with no byte either way (and no connection opened) this long is closed;
    Mender's device closes an idle connection after 600 s too."""
    max_transfer_bytes: int = 1 << 30
    """Largest file ``fleet cp`` moves either way (the device enforces its own limit too)."""
    transfer_timeout: float = 30.0
    """A file transfer whose device sends nothing this long fails (504 for a stat)."""
    rollout_durable: str = "fleet-rollouts"
    """Consumer of update progress (FLEET_UPDATES) that every API instance shares."""
    rollout_device_timeout: float = 3600.0
    """A rollout device with no final result this long after its offer counts as failed."""
    rollout_offer_timeout: float = 30.0
    """An offer the device has not answered (no progress at all) this long is made again:
    it can be lost on a link that dies just after the shard sent it."""
    rollout_offer_attempts: int = 3
    """Offers made to a device before it fails as not answering."""
    rollout_tick: float = 0.2
    """How often a rollout driver looks for devices to offer (also after every progress batch)."""
    max_rollout_devices: int = 5000
    """Devices one rollout may target: its whole state is one KV entry (under 1 MiB)."""
    session_ttl: float = 8 * 3600.0
    """How long a sign-in to the fleet map lasts (its session cookie), in seconds."""
    run_state_service: bool = True
    """Also run a fleet state instance in the API process (a small fleet needs no more)."""

    # --- fleet state service --------------------------------------------------------------
    durable: str = "fleet-state"
    """Durable consumer name; every instance binds the same consumers and shares the work."""
    fetch_batch: int = 64
    fetch_timeout: float = 2.0
    ack_wait: float = 30.0
    retry_delay: float = 1.0
    """Redelivery delay of an event whose state update failed (NATS trouble, CAS exhausted)."""
    drain_timeout: float = 10.0

    _digests: dict[str, str] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_replicas(self.stream_replicas)
        if self.command_timeout <= 0 or self.command_timeout > self.max_command_timeout:
            raise ValueError("command_timeout must be in (0, max_command_timeout]")
        if not 0 < self.page_limit <= self.max_page_limit:
            raise ValueError("page_limit must be in (0, max_page_limit]")
        for name in ("shell_idle_timeout", "shell_start_timeout", "forward_idle_timeout",
                     "transfer_timeout", "max_transfer_bytes", "rollout_tick", "session_ttl",
                     "rollout_device_timeout", "rollout_offer_timeout",
                     "rollout_offer_attempts"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        self._digests = {token_digest(t): op for t, op in self.operator_tokens.items()}

    def operator_of(self, token: str) -> str | None:
        return self._digests.get(token_digest(token))
