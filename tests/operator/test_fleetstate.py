"""The fleet state service end to end: real nats-server, in-process shards, test devices."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from backend.bus import presence, subjects
from backend.devstack.testdevice import TestDevice
from backend.operator import fleetstate
from backend.operator.config import FleetConfig
from backend.operator.fleetstate import DeviceState, FleetState, StateMetrics
from backend.protocol import messages
from tests.operator.support import FleetStateFactory, connected, state_when
from tests.support import ShardFactory, until_true


def raised(alert_id: str, code: str = "disk_full") -> messages.Alert:
    return messages.Alert(
        alert_id, code, "critical", "raised", "disk 97% full", "delete old logs", 1700000000.0
    )


def cleared(alert_id: str, code: str = "disk_full") -> messages.Alert:
    return messages.Alert(alert_id, code, "critical", "cleared")


async def send_alerts(device: TestDevice, *alerts: messages.Alert) -> None:
    for alert in alerts:
        await device.send_alert(alert)
    async with asyncio.timeout(10):
        for alert in alerts:
            await device.wait_acked(alert.id)


def events(service: FleetState, kind: str, outcome: str) -> float:
    labels = {"kind": kind, "outcome": outcome}
    return service.metrics.registry.get_sample_value("fleet_state_events_total", labels) or 0.0


def devices_gauge(service: FleetState, state: str) -> float | None:
    return service.metrics.registry.get_sample_value("fleet_state_devices", {"state": state})


async def devices_kv(nc: NATS) -> KeyValue:
    return await subjects.ensure_devices_bucket(nc.jetstream())


async def test_a_device_reports_where_its_house_is_through_the_shard(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_fleet_state():
        kv = await devices_kv(nc)
        device = await connected("gw-1", shard)
        house = {"geo-lat": 59.33, "geo-lon": 18.07, "geo-address": "house 3, Stockholm, SE"}
        await device.send_status(messages.Status("1.0", inventory=house))
        state = await state_when(kv, "gw-1", lambda s: s.location is not None)
        assert state.location == {"lat": 59.33, "lon": 18.07, "address": "house 3, Stockholm, SE"}
        assert [h["online"] for h in state.detail()["history"]] == [True]


async def test_an_alert_turns_a_device_red_and_its_clear_green_again(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_fleet_state():
        kv = await devices_kv(nc)
        device = await connected("gw-1", shard)
        await device.send_status(messages.Status("1.4.2", {"cpu": 0.25}, 1700000000.0))
        state = await state_when(kv, "gw-1", lambda s: s.online and s.firmware == "1.4.2")
        assert state.health == "green"
        assert state.status == {"values": {"cpu": 0.25}, "ts": 1700000000.0}

        await send_alerts(device, raised("a-1"))
        state = await state_when(kv, "gw-1", lambda s: s.health == "red")
        assert state.detail()["alerts"] == [
            {"id": "a-1", "code": "disk_full", "severity": "critical",
             "description": "disk 97% full", "fix": "delete old logs", "ts": 1700000000.0}
        ]  # fmt: skip

        await send_alerts(device, cleared("a-2"))
        state = await state_when(kv, "gw-1", lambda s: s.health == "green")
        assert state.alerts == {}
        await device.close()


async def test_a_device_stays_red_while_any_alert_is_open(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    async with start_shard() as shard, start_fleet_state():
        kv = await devices_kv(nc)
        device = await connected("gw-1", shard)
        await send_alerts(device, raised("a-1", "disk_full"), raised("a-2", "temp_high"))
        await state_when(kv, "gw-1", lambda s: len(s.alerts) == 2)
        await send_alerts(device, cleared("a-3", "disk_full"))
        state = await state_when(kv, "gw-1", lambda s: len(s.alerts) == 1)
        assert (state.health, list(state.alerts)) == ("red", ["temp_high"])
        await device.close()


async def test_presence_follows_connects_and_disconnects(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_fleet_state() as service:
        kv = await devices_kv(nc)
        device = await connected("gw-1", shard)
        state = await state_when(kv, "gw-1", lambda s: s.online)
        assert state.shard == "a"
        await until_true(lambda: devices_gauge(service, "online") == 1)
        await device.close()
        await state_when(kv, "gw-1", lambda s: not s.online)
        await until_true(lambda: devices_gauge(service, "offline") == 1)


async def test_a_restarted_service_catches_up_on_what_it_missed(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    async with start_shard() as shard:
        kv = await devices_kv(nc)
        async with start_fleet_state():
            device = await connected("gw-1", shard)
            await state_when(kv, "gw-1", lambda s: s.online)
        # Nobody consumes now: everything below waits in the streams.
        await send_alerts(device, raised("a-1", "disk_full"), raised("a-2", "temp_high"))
        await send_alerts(device, cleared("a-3", "disk_full"))
        await device.send_status(messages.Status("2.0.0"))
        await device.close()
        state, _revision = await fleetstate.load(kv, "gw-1")
        assert state is not None
        assert (state.online, state.alerts) == (True, {})

        async with start_fleet_state():
            # One consumer per stream: wait until all three have caught up.
            state = await state_when(kv, "gw-1", lambda s: caught_up(s, ["temp_high"]))
        assert list(state.alerts) == ["temp_high"]


def caught_up(state: fleetstate.DeviceState, open_alerts: list[str]) -> bool:
    """The closed connection, the last status and the alerts all applied."""
    return not state.online and state.firmware == "2.0.0" and list(state.alerts) == open_alerts


async def test_the_service_consumes_inside_async_with_and_is_stopped_after(
    fleet_config: FleetConfig,
) -> None:
    async with FleetState(fleet_config) as service:
        assert service.nc is not None
        assert service.nc.is_connected
    assert service.nc.is_closed


async def test_two_instances_share_the_work_and_lose_nothing(
    nc: NATS, start_shard: ShardFactory, start_fleet_state: FleetStateFactory
) -> None:
    codes = [f"code_{i}" for i in range(8)]
    async with (
        start_shard() as shard,
        start_fleet_state(fetch_batch=1) as first,
        start_fleet_state(fetch_batch=1) as second,
    ):
        kv = await devices_kv(nc)
        devices = [await connected(f"gw-{n}", shard) for n in range(4)]
        await asyncio.gather(
            *(send_alerts(d, *(raised(f"{d.device_id}-{c}", c) for c in codes)) for d in devices)
        )
        for device in devices:
            await state_when(kv, device.device_id, lambda s: len(s.alerts) == len(codes))
        applied = [events(service, "alert", "applied") for service in (first, second)]
        assert sum(applied) == len(devices) * len(codes)  # each exactly once
        assert all(applied), f"one instance did all the work: {applied}"
        for device in devices:
            await device.close()


async def test_an_unreadable_event_is_counted_and_dropped(
    nc: NATS, start_fleet_state: FleetStateFactory
) -> None:
    js = nc.jetstream()
    async with start_fleet_state() as service:
        kv = await devices_kv(nc)
        await js.publish(subjects.alert_subject("gw-1"), b"\xc1 not msgpack")
        await js.publish(subjects.alert_subject("gw-1"), raised("a-1").to_body())
        await state_when(kv, "gw-1", lambda s: s.health == "red")
        assert events(service, "alert", "invalid") == 1
        assert events(service, "alert", "applied") == 1


async def test_concurrent_writers_never_lose_an_update(nc: NATS) -> None:
    kv = await devices_kv(nc)
    metrics = StateMetrics()

    def raise_code(n: int) -> fleetstate.Change:
        return lambda state: state.apply_alert(raised(f"a-{n}", f"code_{n}"), n)

    await asyncio.gather(
        *(fleetstate.update(kv, "gw-1", raise_code(n), metrics) for n in range(1, 13))
    )
    state, _revision = await fleetstate.load(kv, "gw-1")
    assert state is not None
    assert len(state.alerts) == 12
    assert metrics.registry.get_sample_value("fleet_state_update_conflicts_total")


# --- the state of one device, without NATS --------------------------------------------------


def test_an_older_event_never_undoes_a_newer_one() -> None:
    state = DeviceState("gw-1")
    assert state.apply_alert(cleared("a-2"), seq=7)
    assert not state.apply_alert(raised("a-1"), seq=5)  # the raise arrives after its clear
    assert state.health == "green"
    assert state.apply_alert(raised("a-3"), seq=9)  # raised again later
    assert state.health == "red"


def test_a_redelivered_event_changes_nothing() -> None:
    state = DeviceState("gw-1")
    assert state.apply_alert(raised("a-1"), seq=3)
    assert not state.apply_alert(raised("a-1"), seq=3)
    assert state.apply_status(messages.Status("1.0"), seq=4)
    assert not state.apply_status(messages.Status("0.9"), seq=2)
    assert state.firmware == "1.0"
    online = presence.Presence("a", True, 2, 1.0)
    assert state.apply_presence(online, revision=10)
    assert not state.apply_presence(presence.Presence("a", False, 1, 0.5), revision=8)
    assert state.online


def test_remembered_clears_are_bounded() -> None:
    state = DeviceState("gw-1")
    for seq in range(1, fleetstate.MAX_CLEARED + 10):
        state.apply_alert(cleared(f"a-{seq}", f"code_{seq}"), seq)
    assert len(state.cleared) == fleetstate.MAX_CLEARED
    assert "code_1" not in state.cleared  # the oldest went first


def test_the_state_survives_encoding() -> None:
    state = DeviceState("gw-1", online=True, shard="a", firmware="1.0")
    state.apply_alert(raised("a-1"), seq=3)
    state.apply_presence(presence.Presence("a", True, 1, 1.0), revision=4)
    assert DeviceState.decode(state.encode()) == state


def test_an_entry_written_before_inventory_and_history_still_decodes() -> None:
    state = DeviceState("gw-1")
    fields = json.loads(state.encode())
    del fields["inventory"], fields["history"]
    assert DeviceState.decode(json.dumps(fields).encode()) == state


def test_the_location_comes_from_the_geo_inventory_attributes() -> None:
    state = DeviceState("gw-1")
    located = {"geo-lat": 45.76, "geo-lon": 4.83, "geo-address": "12 rue X, Lyon, FR"}
    assert state.apply_status(messages.Status("1.0", inventory=located), seq=1)
    assert state.summary()["location"] == {
        "lat": 45.76,
        "lon": 4.83,
        "address": "12 rue X, Lyon, FR",
    }
    state.apply_status(messages.Status("1.1"), seq=2)  # no inventory: the last one stays
    assert state.location is not None
    for bad in ({"geo-lat": 91.0, "geo-lon": 0}, {"geo-lat": "45", "geo-lon": 4}, {"geo-lat": 1}):
        state.inventory = bad
        assert state.location is None, bad


def test_presence_changes_make_a_bounded_connection_history() -> None:
    state = DeviceState("gw-1")
    for revision in range(1, fleetstate.MAX_HISTORY + 4):
        connected = revision % 2 == 1
        state.apply_presence(presence.Presence(f"s{revision}", connected, revision, 1.0), revision)
    state.apply_presence(None, revision=100)
    history = state.detail()["history"]
    assert len(history) == fleetstate.MAX_HISTORY
    assert history[-1]["online"] is False
    assert [h["shard"] for h in history[-3:-1]] == ["s12", "s13"]
