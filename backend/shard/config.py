"""One configuration object behind both the ``fleet shard`` CLI and the Python API."""

from __future__ import annotations

import resource
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backend.bus.subjects import check_replicas

# Descriptors kept back from the connection budget: NATS, logs, the listening socket, and
# sockets that are being refused with a 503.
FD_RESERVE = 256


def default_max_connections() -> int:
    """What this process can hold: the open-file limit minus a reserve (it cannot be raised)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft - FD_RESERVE)


def default_shard_id() -> str:
    return f"shard-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class ShardConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    shard_id: str = field(default_factory=default_shard_id)
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream_replicas: int = 1
    """Copies of each stream and KV bucket (``bus.ensure_streams``): 3 on a 3-node cluster."""
    nats_credentials: Path | None = None
    """The shard role's nkey seed file (``backend.bus.natsauth``); None: connect without."""
    nats_ca_file: Path | None = None
    """The CA to verify NATS' TLS certificate with; None: the system's, if TLS is used."""
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    max_connections: int = field(default_factory=default_max_connections)
    accept_rate: float = 2000.0
    """Upgrades admitted per second (token bucket); above it: 503 with Retry-After."""
    accept_burst: int = 1000
    ping_interval: float = 30.0
    keepalive_timeout: float = 75.0
    """A connection silent (no frame at all) for this long is reaped."""
    handshake_timeout: float = 10.0
    max_message_size: int = 1 << 20
    max_request_size: int = 8192
    command_timeout: float = 30.0
    drain_timeout: float = 30.0
    nats_recovery_time: float = 10.0
    """Seconds a shard whose NATS client closed for good tries to reconnect before it
    closes its devices with 1012, so that they move to a shard that can serve them."""
    retry_after: float = 10.0
    """Upper bound of the jittered reconnect hint sent with 503 and 1012."""
    ready_file: Path | None = None
    """Written (JSON: shard id, host, port) once the shard accepts connections."""
    backlog: int = 4096

    def __post_init__(self) -> None:
        check_replicas(self.stream_replicas)
        if self.keepalive_timeout <= self.ping_interval:
            raise ValueError("keepalive_timeout must be longer than ping_interval")
