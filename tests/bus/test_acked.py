"""Acked JetStream publishes against a real nats-server: stored, refused, or never answered."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from backend.bus import subjects
from backend.bus.acked import AckedPublisher, ack_error


async def publisher(nc: NATS, timeout: float = 5.0) -> AckedPublisher:
    await subjects.ensure_streams(nc.jetstream())
    result = AckedPublisher(nc, timeout)
    await result.start()
    return result


async def test_a_stored_alert_is_acked_and_its_resend_stored_once(nc: NATS) -> None:
    alerts = await publisher(nc)
    subject, headers = subjects.alert_subject("gw-1"), {subjects.MSG_ID_HEADER: "gw-1/a-1"}
    first = await alerts.publish(subject, b"alert", headers)
    resent = await alerts.publish(subject, b"alert", headers)  # after a lost ack, say
    assert await asyncio.wait_for(first, 5) is None
    assert await asyncio.wait_for(resent, 5) is None  # a duplicate is acked too
    info = await nc.jetstream().stream_info(subjects.ALERTS_STREAM)
    assert info.state.messages == 1


async def test_many_in_flight_each_get_their_own_ack(nc: NATS) -> None:
    alerts = await publisher(nc)
    futures = []
    for n in range(500):
        headers = {subjects.MSG_ID_HEADER: f"gw-{n}/a"}
        futures.append(await alerts.publish(subjects.alert_subject(f"gw-{n}"), b"a", headers))
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    info = await nc.jetstream().stream_info(subjects.ALERTS_STREAM)
    assert info.state.messages == 500


async def test_a_subject_no_stream_takes_fails_at_once(nc: NATS) -> None:
    alerts = await publisher(nc)
    future = await alerts.publish("nowhere.gw-1", b"alert", {})
    with pytest.raises(NoStreamResponseError):
        await asyncio.wait_for(future, 5)


async def test_a_refusal_carries_the_streams_reason(nc: NATS) -> None:
    alerts = await publisher(nc)
    headers = {"Nats-Expected-Stream": "NOT-THIS-ONE"}
    future = await alerts.publish(subjects.alert_subject("gw-1"), b"alert", headers)
    with pytest.raises(APIError, match="expected stream does not match"):
        await asyncio.wait_for(future, 5)


async def test_an_unanswered_publish_is_cancelled_after_the_timeout(nc: NATS) -> None:
    await nc.subscribe("quiet.>")  # takes it, never answers
    alerts = await publisher(nc, timeout=0.3)
    future = await alerts.publish("quiet.gw-1", b"alert", {})
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(future, 5)


def test_only_an_error_key_makes_an_ack_a_refusal() -> None:
    ack = Msg(None, data=b'{"stream":"error","seq":3}')
    assert ack_error(ack) is None
    refused = Msg(None, data=b'{"error":{"code":503,"description":"no leader"}}')
    error = ack_error(refused)
    assert isinstance(error, APIError)
    assert (error.code, error.description) == (503, "no leader")
