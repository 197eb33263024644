"""WebSocket close codes the backend sends, beyond RFC 6455 §7.4.1's own.

RFC 6455 §7.4.2 reserves 4000-4999 for private use; ours are documented in docs/protocol.md.
"""

from __future__ import annotations

# RFC 6455 §7.4.1: "policy violation" - here, a device that keeps sending bad input.
POLICY_VIOLATION = 1008
# RFC 6455 registry: "Service Restart" - the server is draining; reconnect after the hint.
SERVICE_RESTART = 1012

KEEPALIVE_TIMEOUT = 4000
"""The peer sent nothing (not even a pong) within the keep-alive deadline."""
REPLACED = 4001
"""The device opened a newer connection (on this shard or another): this one is superseded."""

RETRY_AFTER_PREFIX = "retry-after="
"""Close reason carrying a reconnect hint in whole seconds, e.g. ``retry-after=7``."""


def retry_after_reason(seconds: int) -> str:
    return f"{RETRY_AFTER_PREFIX}{seconds}"


def parse_retry_after(reason: str) -> int | None:
    """The hint from a 1012 close reason, or None when the reason carries none."""
    if not reason.startswith(RETRY_AFTER_PREFIX):
        return None
    value = reason[len(RETRY_AFTER_PREFIX) :]
    # isdigit() alone admits non-ASCII digits ("²" makes int() raise, "٣" parses).
    return int(value) if value.isascii() and value.isdigit() else None
