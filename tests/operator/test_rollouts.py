"""Update rollouts: the pure rollout, and the API's driver end to end (real nats-server,
in-process shard and API, test devices that install offered updates)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from backend.bus import subjects
from backend.bus.routing import DeviceRouter
from backend.devstack.testdevice import TestDevice, UpdateHandler
from backend.operator.api import OperatorApi
from backend.operator.config import FleetConfig
from backend.operator.rollouts import (
    FAILURE,
    OFFERED,
    PENDING,
    SUCCESS,
    Rollout,
    Rollouts,
    Target,
)
from backend.protocol import messages
from backend.protocol import session as ps
from backend.shard import Shard
from tests.operator.support import ApiFactory, base, call, connected
from tests.support import ShardFactory, until, until_true

CHECKSUM = "9f" * 32
NO_SPACE = "not enough space on /data"
IN_FLIGHT_STATES = ("offered", "downloading", "installing")


class Installs:
    """The devices' side: who was offered the update when, how many installed at once."""

    def __init__(self, failing: frozenset[str] = frozenset(), *, gated: bool = False) -> None:
        self.failing = failing
        self.offered: dict[str, float] = {}
        self.in_flight = self.max_in_flight = 0
        self.user_ids: set[str | None] = set()
        self.gate = asyncio.Event()  # installs wait for it: the test decides when they end
        if not gated:
            self.gate.set()

    def handler(self, device_id: str) -> UpdateHandler:
        async def install(offer: messages.UpdateOffer) -> str:
            self.offered[device_id] = time.monotonic()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self.gate.wait()
                await asyncio.sleep(random.uniform(0.005, 0.03))  # the install takes a while
            finally:
                self.in_flight -= 1
            return NO_SPACE if device_id in self.failing else ""

        return install


async def fleet(shard: Shard, count: int, installs: Installs) -> list[TestDevice]:
    """``count`` devices ru-000, ru-001..., connected in batches."""
    ids = [f"ru-{n:03d}" for n in range(count)]
    devices: list[TestDevice] = []
    for start in range(0, count, 50):
        batch = ids[start : start + 50]
        devices += await asyncio.gather(
            *(connected(d, shard, on_update=installs.handler(d)) for d in batch)
        )
    return devices


def request(devices: list[TestDevice] | None = None, **fields: Any) -> dict[str, Any]:
    selector = {"devices": [d.device_id for d in devices]} if devices else None
    return {
        "version": "2.0.0", "artifact_url": "https://updates.example/fw-2.0.0.bin",
        "checksum": CHECKSUM, "size": 4096, "selector": selector, "max_concurrent": 4,
        "rate": 1000, **fields,
    }  # fmt: skip


async def create(http: aiohttp.ClientSession, api: OperatorApi, **body: Any) -> dict[str, Any]:
    status, created = await call(http, "POST", f"{base(api)}/rollouts", json=body)
    assert status == 201, created
    return dict(created)


async def rollout_when(
    http: aiohttp.ClientSession,
    api: OperatorApi,
    rollout_id: str,
    check: Callable[[dict[str, Any]], bool],
    seen: list[int] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The rollout once ``check`` holds; ``seen`` collects the in-flight count of each look."""

    async def probe() -> dict[str, Any] | None:
        status, rollout = await call(http, "GET", f"{base(api)}/rollouts/{rollout_id}")
        assert status == 200, rollout
        if seen is not None:
            seen.append(sum(rollout["counts"][state] for state in IN_FLIGHT_STATES))
        return rollout if check(rollout) else None

    return await until(probe, timeout)


async def act(
    http: aiohttp.ClientSession, api: OperatorApi, rollout_id: str, action: str
) -> tuple[int, Any]:
    return await call(http, "POST", f"{base(api)}/rollouts/{rollout_id}/{action}", json={})


async def stays(condition: Callable[[], bool], seconds: float) -> None:
    """``condition`` holds all along a window of ``seconds`` (showing nothing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition()
        await asyncio.sleep(0.05)


def finished(rollout: dict[str, Any]) -> bool:
    return rollout["state"] == "finished"


# --- the rollout (pure) ------------------------------------------------------------------------


def a_rollout(devices: int, max_concurrent: int) -> Rollout:
    return Rollout(
        "r-1", "2.0.0", "https://u.example/fw", CHECKSUM, 1, max_concurrent, 10.0, "op-1", {},
        0.0, devices={f"gw-{n}": Target() for n in range(devices)},
    )  # fmt: skip


def test_claims_never_exceed_max_concurrent() -> None:
    rollout = a_rollout(5, 2)
    assert rollout.claim(10, 1.0) == ["gw-0", "gw-1"]
    assert rollout.claim(10, 1.0) == []
    assert rollout.advance("gw-0", SUCCESS, "", 2.0)
    assert rollout.claim(10, 2.0) == ["gw-2"]
    assert rollout.claim(0, 2.0) == []


def test_a_device_only_moves_forward() -> None:
    rollout = a_rollout(1, 1)
    rollout.claim(1, 1.0)
    assert rollout.advance("gw-0", "installing", "", 2.0)
    assert not rollout.advance("gw-0", "downloading", "", 3.0)  # late, redelivered
    assert rollout.advance("gw-0", FAILURE, NO_SPACE, 4.0)
    assert not rollout.advance("gw-0", SUCCESS, "", 5.0)  # final stays final
    assert not rollout.advance("gw-9", SUCCESS, "", 5.0)  # not a target
    assert rollout.devices["gw-0"] == Target(FAILURE, NO_SPACE, 4.0, offers=1)


def test_unanswered_offers_are_made_again_then_failed() -> None:
    rollout = a_rollout(2, 2)
    rollout.claim(2, 100.0)
    rollout.advance("gw-1", "downloading", "", 101.0)  # answered: never offered again
    assert rollout.unanswered(120.0, 30.0, 2) == ([], False)
    assert rollout.unanswered(131.0, 30.0, 2) == (["gw-0"], True)
    assert rollout.devices["gw-0"] == Target(OFFERED, "", 131.0, offers=2)
    assert rollout.unanswered(162.0, 30.0, 2) == ([], True)
    assert rollout.devices["gw-0"].state == FAILURE
    assert rollout.devices["gw-0"].reason == "no answer to 2 offers, 30s apart"
    assert rollout.devices["gw-1"].state == "downloading"


def test_silent_devices_time_out_and_an_empty_rollout_finishes() -> None:
    rollout = a_rollout(2, 2)
    rollout.claim(2, 100.0)
    assert not rollout.expire(150.0, 60.0)
    assert rollout.expire(161.0, 60.0)
    assert rollout.counts() == {**dict.fromkeys(rollout.counts(), 0), FAILURE: 2}
    assert rollout.detail()["failed"][0] == {"device": "gw-0", "reason": "no result within 60s "
                                             "of the offer"}  # fmt: skip
    assert rollout.settle()
    assert rollout.state == "finished"


def test_a_rollout_survives_its_encoding() -> None:
    rollout = a_rollout(3, 1)
    rollout.claim(1, 5.0)
    decoded = Rollout.decode(rollout.encode())
    assert decoded == rollout
    assert [t.state for t in decoded.devices.values()] == [OFFERED, PENDING, PENDING]


# --- through the API -------------------------------------------------------------------------


async def test_a_rollout_over_200_devices_keeps_max_concurrent_and_lists_failures(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    failing = frozenset(f"ru-{n:03d}" for n in range(0, 200, 20))
    installs = Installs(failing)
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        devices = await fleet(shard, 200, installs)
        created = await create(http, api, **request(devices, max_concurrent=8))
        assert (created["state"], created["total"], created["counts"]["pending"]) == (
            "running", 200, 200
        )  # fmt: skip
        seen: list[int] = []
        done = await rollout_when(http, api, created["id"], finished, seen, timeout=90)
        assert max(seen) <= 8, seen
        assert 2 <= installs.max_in_flight <= 8
        assert done["counts"] == {**dict.fromkeys(done["counts"], 0), "success": 190,
                                  "failure": 10}  # fmt: skip
        assert sorted(done["failed"], key=lambda f: f["device"]) == [
            {"device": device, "reason": NO_SPACE} for device in sorted(failing)
        ]
        offer = _offer_event(devices[0])
        assert (offer.sid, offer.user_id, offer.offer.version) == (created["id"], "op-alice",
                                                                   "2.0.0")  # fmt: skip
        labels = {"outcome": "sent"}
        assert (
            api.metrics.registry.get_sample_value("fleet_api_rollout_offers_total", labels) == 200
        )
        for device in devices:
            await device.close()


async def test_an_offer_lost_on_the_way_is_made_again(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs()
    async with (
        start_shard() as shard,
        start_api(run_state_service=False, rollout_offer_timeout=0.5) as api,
    ):
        device = await connected(
            "ru-lost", shard, on_update=installs.handler("ru-lost"), offers_lost=1
        )
        created = await create(http, api, **request([device]))
        done = await rollout_when(http, api, created["id"], finished)
        assert done["counts"]["success"] == 1, done["failed"]
        offers = [e for e in _drain(device) if isinstance(e, ps.UpdateOffered)]
        assert [offer.sid for offer in offers] == [created["id"]] * 2
        await device.close()


async def test_devices_without_updates_fail_with_the_reason_at_once(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    """One device's accept lists no updates (refused before the offer is sent); the other
    (pre-handshake) answers the offer with mender-connect's control error."""
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        unlisted = await connected("ru-unlisted", shard, protocols=(1, 2, 3, 4))
        legacy = await connected("ru-legacy", shard, protocols=(1, 2, 3, 4), handshake=False)
        created = await create(http, api, **request([unlisted, legacy]))
        done = await rollout_when(http, api, created["id"], finished, timeout=10)
        assert sorted(done["failed"], key=lambda f: f["device"]) == [
            {"device": "ru-legacy",
             "reason": "device error: no handler registered for protocol: 0x0102"},
            {"device": "ru-unlisted",
             "reason": "offer not delivered: device ru-unlisted does not serve updates (0x0102); "
             "it serves shell (0x0001), file transfer (0x0002), port forward (0x0003), "
             "mender client (0x0004)"},
        ]  # fmt: skip
        for device in (unlisted, legacy):
            await device.close()


async def test_offers_start_no_faster_than_the_rate(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs()
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        devices = await fleet(shard, 12, installs)
        created = await create(http, api, **request(devices, max_concurrent=12, rate=5))
        await rollout_when(http, api, created["id"], finished)
        times = sorted(installs.offered.values())
        # A burst of one tick's worth (1 offer), then one every 1/5 s: 11 more take >= 2.2 s.
        assert times[-1] - times[0] >= 2.0
        for device in devices:
            await device.close()


async def test_pause_holds_new_offers_until_resumed(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs(gated=True)
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        devices = await fleet(shard, 10, installs)
        rollout_id = (await create(http, api, **request(devices, max_concurrent=2)))["id"]
        await until_true(lambda: len(installs.offered) == 2)
        status, paused = await act(http, api, rollout_id, "pause")
        assert (status, paused["state"]) == (200, "paused")
        installs.gate.set()
        await rollout_when(http, api, rollout_id, lambda r: r["counts"]["success"] == 2)
        await stays(lambda: len(installs.offered) == 2, 1.0)  # two free slots, no offers

        resumed = time.monotonic()
        status, running = await act(http, api, rollout_id, "resume")
        assert (status, running["state"]) == (200, "running")
        done = await rollout_when(http, api, rollout_id, finished)
        assert done["counts"]["success"] == 10
        later = sorted(installs.offered.values())[2:]
        assert all(offered >= resumed for offered in later)
        for device in devices:
            await device.close()


async def test_abort_stops_offers_for_good(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs(gated=True)
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        devices = await fleet(shard, 10, installs)
        rollout_id = (await create(http, api, **request(devices, max_concurrent=2)))["id"]
        await until_true(lambda: len(installs.offered) == 2)
        status, aborted = await act(http, api, rollout_id, "abort")
        assert (status, aborted["state"]) == (200, "aborted")
        installs.gate.set()  # the offers already made run to their end
        done = await rollout_when(http, api, rollout_id, lambda r: r["counts"]["success"] == 2)
        assert (done["state"], done["counts"]["pending"]) == ("aborted", 8)
        await stays(lambda: len(installs.offered) == 2, 1.0)
        for action in ("resume", "abort", "pause"):
            status, body = await act(http, api, rollout_id, action)
            assert (status, body["error"]) == (409, "conflict")
        status, listing = await call(http, "GET", f"{base(api)}/rollouts")
        assert [(r["id"], r["state"]) for r in listing["rollouts"]] == [(rollout_id, "aborted")]
        for device in devices:
            await device.close()


async def test_the_driver_ticks_without_leaving_consumers_behind(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession, nc: NATS
) -> None:
    installs = Installs(gated=True)  # the rollout stays running: every tick looks at it
    async with start_shard() as shard, start_api(run_state_service=False, rollout_tick=0.01) as api:
        devices = await fleet(shard, 2, installs)
        await create(http, api, **request(devices, max_concurrent=1))
        await asyncio.sleep(1.0)  # about a hundred ticks
        info = await nc.jetstream().stream_info(subjects.ROLLOUTS_STREAM)
        assert info.state.consumer_count == 0
        installs.gate.set()
        for device in devices:
            await device.close()


async def test_the_driver_runs_inside_async_with_and_is_stopped_after(
    fleet_config: FleetConfig, nc: NATS
) -> None:
    js = nc.jetstream()
    router = DeviceRouter(nc, await subjects.ensure_streams(js))
    devices = await subjects.ensure_devices_bucket(js)
    async with Rollouts(fleet_config, nc, router, devices, CollectorRegistry()) as driver:
        assert await driver.all() == []
    assert driver._tasks
    assert all(task.done() for task in driver._tasks)


async def test_a_restarted_api_carries_the_rollout_on(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs(gated=True)
    async with start_shard() as shard:
        devices = await fleet(shard, 6, installs)
        async with start_api(run_state_service=False, ack_wait=2.0) as api:
            rollout_id = (await create(http, api, **request(devices, max_concurrent=2)))["id"]
            await until_true(lambda: len(installs.offered) == 2)
        installs.gate.set()  # results arrive while no API runs: FLEET_UPDATES keeps them
        async with start_api(run_state_service=False, ack_wait=2.0) as api:
            done = await rollout_when(http, api, rollout_id, finished)
            assert done["counts"]["success"] == 6
        for device in devices:
            await device.close()


async def test_the_selector_reads_the_fleet_state(
    start_shard: ShardFactory, start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    installs = Installs()
    async with start_shard() as shard, start_api() as api:
        devices = await fleet(shard, 6, installs)
        firmwares = ["1.0", "1.0", "1.0", "1.0", "0.9", "1.0"]
        for device, firmware in zip(devices, firmwares, strict=True):
            await device.send_status(messages.Status(firmware))
        await devices[3].send_alert(messages.Alert("a-1", "smoke", "critical", "raised"))

        async def recorded() -> bool | None:
            _status, page = await call(http, "GET", f"{base(api)}/devices?limit=10")
            states = [(d["firmware"], d["health"]) for d in page["devices"]]
            return True if len(states) == 6 and all(f for f, _h in states) and (
                "1.0", "red") in states else None  # fmt: skip

        await until(recorded)
        selector = {"state": "green", "firmware": "1.0", "prefix": "ru-"}
        created = await create(http, api, **request(selector=selector, percent=75))
        assert created["total"] == 3  # ru-000, 001, 002, 005 match; 75 % of 4
        await rollout_when(http, api, created["id"], finished)
        assert sorted(installs.offered) == ["ru-000", "ru-001", "ru-002"]
        status, body = await call(
            http, "POST", f"{base(api)}/rollouts", json=request(selector={"prefix": "none-"})
        )
        assert (status, body["field"], body["message"]) == (
            400, "selector", "the selector matches no device"
        )  # fmt: skip
        for device in devices:
            await device.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"version": ""}, "version"), ({"artifact_url": "ftp://x"}, "artifact_url"),
     ({"checksum": "abc"}, "checksum"), ({"selector": None}, "selector"),
     ({"selector": {"colour": "red"}}, "selector"),
     ({"selector": {"devices": ["bad id"]}}, "selector"),
     ({"selector": {"state": "amber"}}, "selector"), ({"percent": 0}, "percent"),
     ({"percent": 150}, "percent"), ({"count": 0}, "count"),
     ({"percent": 10, "count": 2}, "count"), ({"max_concurrent": 0}, "max_concurrent"),
     ({"max_concurrent": "many"}, "max_concurrent"), ({"rate": -1}, "rate"),
     ({"size": -1}, "size")],
)  # fmt: skip
async def test_a_bad_rollout_request_names_its_field(
    start_api: ApiFactory, http: aiohttp.ClientSession, changes: dict[str, Any], field: str
) -> None:
    async with start_api(run_state_service=False) as api:
        body = {**request(selector={"devices": ["gw-1"]}), **changes}
        status, answer = await call(http, "POST", f"{base(api)}/rollouts", json=body)
        assert (status, answer["error"], answer["field"]) == (400, "bad_request", field), answer
        labels = {"reason": "bad_request", "field": field}
        assert api.metrics.registry.get_sample_value("fleet_api_rejected_total", labels) == 1


async def test_unknown_rollouts_and_bad_ids_are_refused(
    start_api: ApiFactory, http: aiohttp.ClientSession
) -> None:
    async with start_api(run_state_service=False) as api:
        status, body = await call(http, "GET", f"{base(api)}/rollouts/r-none")
        assert (status, body["error"]) == (404, "not_found")
        status, body = await act(http, api, "r-none", "pause")
        assert (status, body["error"]) == (404, "not_found")
        status, body = await call(http, "GET", f"{base(api)}/rollouts/a.b")
        assert (status, body["field"]) == (400, "id")
        assert await call(http, "GET", f"{base(api)}/rollouts") == (200, {"rollouts": []})


def _offer_event(device: TestDevice) -> ps.UpdateOffered:
    for event in _drain(device):
        if isinstance(event, ps.UpdateOffered):
            return event
    raise AssertionError(f"{device.device_id} was offered no update")


def _drain(device: TestDevice) -> list[ps.Event]:
    """The events the device has seen and nobody has taken yet."""
    events = []
    while not device.events.empty():
        events.append(device.events.get_nowait())
    return events
