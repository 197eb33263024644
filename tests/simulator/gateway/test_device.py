"""The device model without a socket: what it queues in its session, when it is due, and
what it asks of its connection. A real server-role session stands in for the backend."""

from __future__ import annotations

import random

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol import session as ps
from simulator.behaviour import Behaviour
from simulator.fleet import Fleet, parse_targets
from simulator.gateway.device import REBOOT, Device
from simulator.gateway.link import NEVER, SimulatedLink
from simulator.network import NetworkProfile

LINK = NetworkProfile("link", bandwidth=1000.0)


def device(**behaviour: float | str) -> Device:
    fleet = Fleet(
        parse_targets("ws://127.0.0.1:1"),
        lambda device_id: "token",
        behaviour=Behaviour(**behaviour),  # type: ignore[arg-type]
        rng=random.Random(7),
    )
    return Device(fleet, "gw-1", SimulatedLink(LINK), now=0.0)


def sent(dev: Device) -> list[env.ProtoMsg]:
    return [env.decode(data) for data in dev.session.messages_to_send()]


def from_backend(dev: Device, server: ps.DeviceSession, now: float) -> str | None:
    """What ``server`` queued, received by the device; the last intent."""
    intent = None
    for data in server.messages_to_send():
        dev.session.receive_message(data)
        for event in dev.session.events_received():
            intent = dev.received(event, now) or intent
    return intent


def test_offline_it_raises_alerts_that_wait_and_go_on_connecting() -> None:
    dev = device(alerts_per_hour=3600.0 * 10, clear_after=1000.0)
    assert dev.due < 10.0  # an alert is due soon, connected or not
    dev.run_due(dev.due)
    assert dev.session.outbox_size == 1
    dev.session.messages_to_send()  # a driver drops what queued offline
    dev.connected(now=5.0)
    assert dev.fleet.stats.alerts["resent"] == 1
    assert dev.due <= 5.0  # status at once (or an alert, sooner)


def test_connected_it_reports_status_then_waits_its_interval() -> None:
    dev = device(alerts_per_hour=0.0, status_interval=60.0)
    assert dev.due == NEVER  # offline, nothing to do
    dev.connected(now=1.0)
    dev.run_due(1.0)
    (status,) = sent(dev)
    assert m.Status.from_body(status.body).firmware == "1.0.0"
    assert 1.0 + 54.0 <= dev.due <= 1.0 + 66.0
    assert dev.fleet.stats.statuses == 1


def test_an_acked_alert_is_forgotten_and_its_latency_reported() -> None:
    dev = device(alerts_per_hour=3600.0 * 10, clear_after=1000.0)
    dev.connected(now=0.0)
    while not dev.alert_sent:
        dev.run_due(dev.due)
    (alert_id,) = dev.alert_sent
    server = ps.DeviceSession(ps.Role.SERVER)
    server.ack_alert(alert_id)
    from_backend(dev, server, now=1.0)
    assert dev.alert_sent is None
    assert dev.fleet.stats.alerts["acked"] == 1


def test_a_command_is_answered_after_its_latency() -> None:
    dev = device(alerts_per_hour=0.0, command_latency=0.5)
    dev.connected(now=0.0)
    dev.run_due(0.0)
    sent(dev)  # the status
    server = ps.DeviceSession(ps.Role.SERVER)
    server.send_command("cmd-1", m.CommandRequest("hostname", 10.0))
    from_backend(dev, server, now=1.0)
    assert dev.due > 1.0  # not answered at once
    dev.run_due(dev.due)
    (result,) = sent(dev)
    assert m.CommandResult.from_body(result.body).output == b"gw-1\n"


def test_an_update_downloads_installs_and_asks_for_a_reboot_even_across_a_drop() -> None:
    dev = device(alerts_per_hour=0.0, install_time=1.0, update_failure_share=0.0)
    dev.connected(now=0.0)
    server = ps.DeviceSession(ps.Role.SERVER)
    server.offer_update("up-1", m.UpdateOffer("2.0.0", "https://x/fw", "00" * 32, 4000))
    from_backend(dev, server, now=0.0)  # 4 s at 1000 B/s, then the install
    dev.connection_lost()
    intent, now = None, 0.0
    while intent is None and dev.due < NEVER:
        now = dev.due
        intent = dev.run_due(now)
    assert intent == REBOOT
    assert now >= 4.0
    assert dev.firmware == "2.0.0"
    dev.session.messages_to_send()
    dev.connected(now + 5.0)  # the new firmware reports the success
    states = [m.UpdateProgress.from_body(msg.body).state for msg in sent(dev)]
    assert states == ["success"]
