"""Reading the alert stream back after a run, against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from backend.bus import natsauth, subjects
from backend.devstack.natsserver import NatsServer
from backend.protocol.messages import Alert
from simulator.audit import audit_stream, count_alerts
from tests.natsauth_support import connect_as, secured_server

pytestmark = pytest.mark.integration  # every test here runs real servers

RUN = "abc123"


async def counted(nats_url: str, run_id: str) -> dict[str, int]:
    """``count_alerts`` without the span (see its own test)."""
    counts = await count_alerts(nats_url, run_id)
    return {key: value for key, value in counts.items() if key != "span_s"}


async def publish(js: JetStreamContext, device_id: str, alert_id: str) -> bool:
    """Store an alert as a shard does; True if JetStream took it as a duplicate."""
    alert = Alert(alert_id, "smoke", "critical", "raised", "Smoke in the kitchen", "Leave", 1.0)
    ack = await js.publish(
        subjects.alert_subject(device_id),
        alert.to_body(),
        headers={subjects.MSG_ID_HEADER: subjects.alert_msg_id(device_id, alert_id)},
    )
    return bool(ack.duplicate)


async def test_counts_the_unique_alerts_of_one_run(nats_server: NatsServer, nc: NATS) -> None:
    js = nc.jetstream()
    await subjects.ensure_streams(js)
    stored = [
        ("gw-1", f"{RUN}-1"),
        ("gw-1", f"{RUN}-2"),
        ("gw-2", f"{RUN}-1"),  # the same alert id on another device is another alert
        ("gw-1", "def456-1"),  # another run
        ("gw-1", f"{RUN}4-1"),  # a run whose id only starts like ours
    ]
    assert [await publish(js, device, alert_id) for device, alert_id in stored] == [False] * 5
    assert await publish(js, "gw-1", f"{RUN}-2")  # a resend within the window: not stored again
    assert await counted(nats_server.url, RUN) == {"unique": 3, "duplicates": 0}
    assert await counted(nats_server.url, "def456") == {"unique": 1, "duplicates": 0}


@pytest.mark.parametrize("foreign", [[], [("gw-1", "def456-1"), ("gw-2", "def456-7")]])
async def test_a_stream_without_the_run_counts_nothing(
    nats_server: NatsServer, nc: NATS, foreign: list[tuple[str, str]]
) -> None:
    js = nc.jetstream()
    await subjects.ensure_streams(js)
    for device, alert_id in foreign:
        await publish(js, device, alert_id)
    async with asyncio.timeout(10):  # reading must end even when nothing matches
        assert await count_alerts(nats_server.url, RUN) == {
            "unique": 0, "duplicates": 0, "span_s": 0.0
        }  # fmt: skip


async def test_a_resend_after_the_dedup_window_shows_as_a_duplicate(
    nats_server: NatsServer, nc: NATS
) -> None:
    # The real window is 2 minutes; a gateway resending later than that is stored twice.
    js = nc.jetstream()
    await js.add_stream(dataclasses.replace(subjects.STREAMS[0], duplicate_window=0.2))
    assert not await publish(js, "gw-1", f"{RUN}-1")
    await asyncio.sleep(1.0)  # well past the window
    assert not await publish(js, "gw-1", f"{RUN}-1")
    await publish(js, "gw-1", f"{RUN}-2")
    assert await counted(nats_server.url, RUN) == {"unique": 2, "duplicates": 1}


async def test_audit_stream_reports_what_count_alerts_does(
    nats_server: NatsServer, nc: NATS
) -> None:
    js = nc.jetstream()
    await subjects.ensure_streams(js)
    for device, alert_id in [("gw-1", f"{RUN}-1"), ("gw-2", f"{RUN}-1"), ("gw-2", "def456-1")]:
        await publish(js, device, alert_id)
    in_child = await asyncio.to_thread(audit_stream, nats_server.url, RUN, 30)
    assert in_child == await count_alerts(nats_server.url, RUN)
    assert (in_child["unique"], in_child["duplicates"]) == (2, 0)


async def test_the_span_runs_from_the_first_stored_alert_to_the_last(
    nats_server: NatsServer, nc: NATS
) -> None:
    js = nc.jetstream()
    await subjects.ensure_streams(js)
    await publish(js, "gw-1", f"{RUN}-1")
    await asyncio.sleep(0.5)  # the stream stamps each message when it stores it
    await publish(js, "gw-1", f"{RUN}-2")
    span = (await count_alerts(nats_server.url, RUN))["span_s"]
    assert 0.5 <= span < 5


async def test_audit_stream_raises_when_nats_is_unreachable(nats_server: NatsServer) -> None:
    url = nats_server.url
    nats_server.stop()
    with pytest.raises(RuntimeError, match="reading the alert stream failed"):
        await asyncio.to_thread(audit_stream, url, RUN, 30)


async def test_the_audit_role_reads_the_stream_and_no_credentials_read_nothing(
    tmp_path: Path,
) -> None:
    with secured_server(tmp_path, [natsauth.SHARD, natsauth.AUDIT]) as (server, seeds):
        shard = await connect_as(server.url, natsauth.SHARD, seeds[natsauth.SHARD], [])
        try:
            js = shard.jetstream()
            await subjects.ensure_streams(js)
            await publish(js, "gw-1", f"{RUN}-1")
        finally:
            await shard.close()
        seed = seeds[natsauth.AUDIT]
        in_child = await asyncio.to_thread(audit_stream, server.url, RUN, 30, seed)
        assert (in_child["unique"], in_child["duplicates"]) == (1, 0)
        with pytest.raises(RuntimeError, match="Authorization Violation"):
            await asyncio.to_thread(audit_stream, server.url, RUN, 30)
