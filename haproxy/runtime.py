"""HAProxy's runtime API (the admin ``stats socket``): drain a shard's server lines.

One command per connection (HAProxy's non-interactive mode): send a line, read until HAProxy
closes the socket. Plain blocking sockets, so it also runs in gevent-driven processes.
"""

from __future__ import annotations

import socket
from pathlib import Path

from backend.protocol.errors import FleetError

BACKEND = "shards"
STATES = ("ready", "drain", "maint")


class RuntimeApiError(FleetError):
    """HAProxy refused a command or could not be reached; the message says which socket."""


def command(admin_socket: Path, line: str, timeout: float = 5.0) -> str:
    """HAProxy's answer to one runtime API command."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise RuntimeApiError(f"HAProxy's runtime API at {admin_socket}: {exc}") from None
    return b"".join(chunks).decode(errors="replace")


def server_names(admin_socket: Path, backend: str = BACKEND) -> list[str]:
    """The server lines of ``backend``, from ``show servers state`` (one row per server,
    after a version line and a ``#`` header; the fourth field is the server's name)."""
    answer = command(admin_socket, f"show servers state {backend}")
    rows = [line.split() for line in answer.splitlines()[1:] if line and not line.startswith("#")]
    if not rows:
        raise RuntimeApiError(f"HAProxy at {admin_socket} has no backend {backend!r}: {answer!r}")
    return [row[3] for row in rows]


def lines_of(shard: str, names: list[str]) -> list[str]:
    """A shard's server lines: named after it, or ``<shard>_<n>`` with one per source address."""
    return [name for name in names if name == shard or name.rsplit("_", 1)[0] == shard]


def set_shard_state(admin_socket: Path, shard: str, state: str, backend: str = BACKEND) -> int:
    """Put every server line of ``shard`` into ``state`` (drain: no new connections, the open
    ones stay); how many lines changed. Raises RuntimeApiError if the shard has none."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    lines = lines_of(shard, server_names(admin_socket, backend))
    if not lines:
        raise RuntimeApiError(f"HAProxy at {admin_socket} has no server line for {shard!r}")
    for name in lines:
        answer = command(admin_socket, f"set server {backend}/{name} state {state}").strip()
        if answer:  # success is silent
            raise RuntimeApiError(f"HAProxy at {admin_socket} refused {name} {state}: {answer}")
    return len(lines)
