"""Read the alert stream back after a run: how many of this run's alerts it stored, and
whether any was stored twice. Gateways only forget an alert once the shard acked it, and the
shard acks only after JetStream stored it, so acked alerts missing here are lost alerts.

Runs as its own process (``python -m simulator.audit NATS_URL RUN_ID [CREDENTIALS]``): the
simulator lives under gevent's monkey patching, nats-py under asyncio. CREDENTIALS is the
audit role's nkey seed file (``backend.bus.natsauth``): it may read the alert stream, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DeliverPolicy

from backend.bus import natsauth, subjects


async def count_alerts(
    nats_url: str, run_id: str, credentials: Path | None = None
) -> dict[str, Any]:
    """Stored alert messages of run ``run_id``: unique ids, extra copies, and the seconds
    from the first stored to the last (the stream's own timestamps: the rate it took them)."""
    # One retry: nats-py's default (60, two seconds apart, even before the first connect)
    # would outlast audit_stream's timeout when NATS is gone.
    nc = await nats.connect(
        nats_url, connect_timeout=5, max_reconnect_attempts=1,
        **natsauth.connect_options(natsauth.AUDIT, natsauth.Settings(credentials)),
    )  # fmt: skip
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.ALERTS_STREAM)
        ids: Counter[str] = Counter()
        stored_at: list[float] = []
        if info.state.messages:
            sub = await js.subscribe(
                subjects.alert_subject("*"),
                ordered_consumer=True,
                headers_only=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            async for msg in sub.messages:
                msg_id = (msg.headers or {}).get(subjects.MSG_ID_HEADER, "")
                if f":{run_id}-" in msg_id:
                    ids[msg_id] += 1
                    stored_at.append(msg.metadata.timestamp.timestamp())
                if msg.metadata.num_pending == 0:
                    break
    finally:
        await nc.close()
    span = max(stored_at) - min(stored_at) if stored_at else 0.0
    return {"unique": len(ids), "duplicates": sum(ids.values()) - len(ids), "span_s": span}


def audit_stream(
    nats_url: str, run_id: str, timeout: float = 120.0, credentials: Path | None = None
) -> dict[str, Any]:
    """``count_alerts`` in a child process (safe to call from a gevent-patched process)."""
    given = [] if credentials is None else [str(credentials)]
    result = subprocess.run(
        [sys.executable, "-m", "simulator.audit", nats_url, run_id, *given],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reading the alert stream failed: {result.stderr.strip()}")
    counts: dict[str, Any] = json.loads(result.stdout)
    return counts


def main(argv: list[str]) -> Any:
    nats_url, run_id, *credentials = argv
    seed_file = Path(credentials[0]) if credentials else None
    print(json.dumps(asyncio.run(count_alerts(nats_url, run_id, seed_file))))


if __name__ == "__main__":
    main(sys.argv[1:])
