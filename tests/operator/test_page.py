"""The fleet map in a real browser (Debian's chromium through Playwright) against a real
nats-server, shard, operator API with its fleet state, and test devices at real places.

Each test's screenshots are kept in ``runs/ui-<time>/`` (one directory per test session, shown
by ``fleet runs list``). Every test also checks that the page asked for nothing beyond
loopback. The page's own modules are checked first, without a browser: ``node --check`` on
each, and the fleet model (``static/js/fleet.js``) run under node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client as NATS
from playwright.async_api import Page, Request, async_playwright, expect

from backend.bus import subjects
from backend.devstack import browser
from backend.devstack.testdevice import TestDevice
from backend.operator.api import OperatorApi
from backend.operator.config import FleetConfig
from backend.operator.fleetstate import DeviceState, load
from backend.operator.web import STATIC_DIR
from backend.protocol import messages
from backend.shard import Shard
from tests.operator.support import (
    OPERATOR_TOKEN,
    ApiFactory,
    FleetStateFactory,
    base,
    connected,
    state_when,
)
from tests.support import ShardFactory

JS_DIR = STATIC_DIR / "js"
HOUSES = {
    "gw-green": {"geo-lat": 59.33, "geo-lon": 18.07, "geo-address": "house 1, Stockholm, SE"},
    "gw-red": {"geo-lat": -33.87, "geo-lon": 151.21, "geo-address": "house 2, Sydney, AU"},
    "gw-grey": {"geo-lat": -12.05, "geo-lon": -77.04, "geo-address": "house 3, Lima, PE"},
}
SMOKE = messages.Alert(
    "a-1", "smoke", "critical", "raised", "Smoke detected in the kitchen",
    "Call the fire brigade", time.time(),
)  # fmt: skip


# --- the modules, without a browser ---------------------------------------------------------


def node(*args: str, script: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", *args], input=script, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", sorted(p.name for p in JS_DIR.glob("*.js")))
def test_each_page_module_parses(module: str) -> None:
    checked = node("--check", str(JS_DIR / module))
    assert checked.returncode == 0, checked.stderr


def test_the_fleet_model_applies_deltas_counts_marks_and_filters() -> None:
    script = f"""
import {{ Fleet, markOf, matcher }} from {json.dumps((JS_DIR / "fleet.js").as_uri())};
const fleet = new Fleet();
fleet.load({{ rows: [["gw-1", 1, 2, 1, "1.0", "house 1, Lyon, FR", 0],
                     ["gw-2", 3, 4, 3, "1.1", "house 2, Oslo, NO", 1],
                     ["gw-3", null, null, 2, "1.0", "", 1]] }});
const changed = fleet.apply({{ rows: [["gw-1", 1, 2, 3, "1.0", "house 1, Lyon, FR", 2]],
                               removed: ["gw-2"] }});
const rows = [...fleet.rows.values()];
console.log(JSON.stringify({{
  changed, counts: fleet.counts(), marks: rows.map(markOf),
  lyon: rows.filter(matcher({{ search: "lyon", state: "", online: "", firmware: "" }})).length,
  red: rows.filter(matcher({{ search: "", state: "red", online: "true", firmware: "" }})).length,
  firmware: rows.filter(matcher({{ search: "", state: "", online: "", firmware: "1.1" }})).length,
}}));
"""
    ran = node("--input-type=module", script=script)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {
        "changed": ["gw-1", "gw-2"],
        "counts": {"green": 0, "red": 1, "grey": 1, "total": 2},
        "marks": ["red", "grey"],
        "lyon": 1, "red": 1, "firmware": 0,
    }  # fmt: skip


# --- in the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def screenshots() -> Path:
    path = Path("runs") / time.strftime("ui-%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Visit:
    """A signed-in page, its screenshots and every URL it asked for."""

    def __init__(self, page: Page, api: OperatorApi, screenshots: Path, name: str) -> None:
        self.page = page
        self.api = api
        self.screenshots = screenshots
        self.name = name
        self.urls: list[str] = []
        page.on("request", self._requested)

    def _requested(self, request: Request) -> None:
        self.urls.append(request.url)

    async def shot(self, what: str) -> Path:
        path = self.screenshots / f"{self.name}-{what}.png"
        await self.page.screenshot(path=path)
        return path

    async def sign_in(self, token: str = OPERATOR_TOKEN) -> None:
        await self.page.goto(f"{base(self.api)}/")
        await self.page.fill("#token", token)
        await self.page.click("button[type=submit]")

    async def open_device(self, device_id: str) -> None:
        await self.page.click(f"#list li[data-id={device_id}]")
        await expect(self.page.locator("#panel h2")).to_have_text(device_id)

    def beyond_loopback(self) -> list[str]:
        return [url for url in self.urls if not _on_loopback(url)]


def _on_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


@pytest.fixture
def visit(request: pytest.FixtureRequest, screenshots: Path) -> Any:
    """``async with visit() as v:`` a fresh browser page on a running API (signed out)."""

    @contextlib.asynccontextmanager
    async def make(api: OperatorApi) -> AsyncIterator[Visit]:
        async with async_playwright() as playwright:
            chromium = await browser.launch(playwright)
            try:
                page = await chromium.new_page(viewport={"width": 1400, "height": 850})
                seen = Visit(page, api, screenshots, request.node.name.removeprefix("test_"))
                yield seen
                assert seen.beyond_loopback() == []
            finally:
                await chromium.close()

    return make


@contextlib.asynccontextmanager
async def houses(shard: Shard, nc: NATS) -> AsyncIterator[dict[str, TestDevice]]:
    """gw-green and gw-red online (gw-red with an open alert), gw-grey gone offline."""
    devices = {device_id: await connected(device_id, shard) for device_id in HOUSES}
    kv = await subjects.ensure_devices_bucket(nc.jetstream())
    try:
        for device_id, device in devices.items():
            await device.send_status(
                messages.Status("1.4.2", {"temp": 21.5}, 1.0, HOUSES[device_id])
            )
            await state_when(kv, device_id, lambda s: s.location is not None)
        await devices["gw-red"].send_alert(SMOKE)
        await state_when(kv, "gw-red", lambda s: s.health == "red")
        await devices["gw-grey"].close()
        await state_when(kv, "gw-grey", lambda s: not s.online)
        yield devices
    finally:
        for device in devices.values():
            await device.close()


async def ready(v: Visit) -> None:
    await expect(v.page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)


@dataclasses.dataclass
class OnTheMap:
    """A signed-in page with the fleet drawn: the API it shows and the three houses."""

    v: Visit
    api: OperatorApi
    devices: dict[str, TestDevice]


@pytest.fixture
def on_the_map(nc: NATS, start_shard: ShardFactory, start_api: ApiFactory, visit: Any) -> Any:
    """``async with on_the_map() as m:`` a shard, an API, the houses, a signed-in page."""

    @contextlib.asynccontextmanager
    async def open_map() -> AsyncIterator[OnTheMap]:
        async with (
            start_shard(shard_id="a") as shard,
            start_api() as api,
            houses(shard, nc) as devices,
            visit(api) as v,
        ):
            await v.sign_in()
            await ready(v)
            yield OnTheMap(v, api, devices)

    return open_map


async def fleet_states(nc: NATS) -> dict[str, DeviceState]:
    kv = await subjects.ensure_devices_bucket(nc.jetstream())
    found = {}
    for device_id in HOUSES:
        state, _revision = await load(kv, device_id)
        assert state is not None
        found[device_id] = state
    return found


async def test_sign_in_and_the_marks_match_the_fleet_state(on_the_map: Any, nc: NATS) -> None:
    async with on_the_map() as m:
        v = m.v
        states = await fleet_states(nc)
        expected = {"green": 0, "red": 0, "grey": 0}
        for state in states.values():
            expected["grey" if not state.online else state.health] += 1
        counts = v.page.locator("#counts")
        for kind, count in expected.items():
            await expect(counts).to_have_attribute(f"data-{kind}", str(count))
        for kind, count in expected.items():  # far apart: one mark each, no cluster
            await expect(v.page.locator(f"#map .mark-{kind}")).to_have_count(count)
        await expect(v.page.locator("#map .mark")).to_have_count(len(states))
        await v.shot("fleet")


async def test_an_alert_turns_the_mark_red_with_description_and_fix_then_offline_grey(
    on_the_map: Any,
) -> None:
    async with on_the_map() as m:
        v = m.v
        await v.open_device("gw-green")
        await expect(v.page.locator("#panel")).to_contain_text("No open alert.")
        leak = messages.Alert(
            "b-1", "water-leak", "critical", "raised", "Water detected under the washing "
            "machine", "Close the main valve", time.time(),
        )  # fmt: skip
        await m.devices["gw-green"].send_alert(leak)
        selected = v.page.locator("#map .mark.selected")
        await expect(selected).to_have_class(re.compile(r"\bmark-red\b"), timeout=10000)
        panel = v.page.locator("#panel")
        await expect(panel).to_contain_text("critical: Water detected under the washing machine")
        await expect(panel).to_contain_text("Suggested fix: Close the main valve")
        await expect(panel).to_contain_text("Since ")
        await v.shot("red-panel")
        await m.devices["gw-green"].close()  # gone: grey, whatever its alerts
        await expect(selected).to_have_class(re.compile(r"\bmark-grey\b"), timeout=10000)
        await expect(panel).to_contain_text("Offline since")


async def test_a_command_from_the_panel_shows_its_output(on_the_map: Any) -> None:
    async with on_the_map() as m:
        v = m.v
        await v.open_device("gw-green")
        await v.page.fill("#panel input[name=command]", "echo hello from the map")
        await v.page.click("#panel form.command button")
        output = v.page.locator("#panel .output")
        await expect(output).to_contain_text("hello from the map")
        await expect(output).to_contain_text("[exit 0")
        await v.shot("command")


async def test_a_shell_typed_into_shows_the_echo(on_the_map: Any) -> None:
    async with on_the_map() as m:
        v = m.v
        await v.open_device("gw-green")
        await v.page.click("text=Open a shell")
        await expect(v.page.locator("#panel .shell-line")).to_contain_text("type here")
        await v.page.keyboard.type("echo shell-works\n")
        screen = v.page.locator("#panel .xterm-rows")
        await expect(screen).to_contain_text("$ echo shell-works")  # typed, echoed
        await expect(screen).to_contain_text(re.compile(r"shell-works\s*\$"))  # its output
        await v.shot("shell")


async def test_filters_search_and_the_keyboard_list(on_the_map: Any) -> None:
    async with on_the_map() as m:
        v = m.v
        items = v.page.locator("#list li")
        await expect(items).to_have_count(3)
        await expect(items.first).to_have_attribute("data-id", "gw-red")  # red first
        await v.page.select_option("#state", "red")
        await expect(v.page.locator("#map .mark")).to_have_count(1)
        await expect(v.page.locator("#map .mark-red")).to_have_count(1)
        await v.page.select_option("#state", "")
        await v.page.select_option("#online", "false")
        await expect(items).to_have_count(1)
        await expect(items.first).to_have_attribute("data-id", "gw-grey")
        await v.page.select_option("#online", "")
        await v.page.fill("#search", "stockholm")  # by address
        await expect(items).to_have_count(1)
        await v.page.fill("#search", "")
        await expect(items).to_have_count(3)
        await v.page.focus("#list")
        for key in ("ArrowDown", "ArrowDown", "ArrowUp", "End", "Enter"):
            await v.page.keyboard.press(key)
        last = await items.last.get_attribute("data-id")
        await expect(v.page.locator("#panel h2")).to_have_text(last or "")
        await v.shot("keyboard")


async def test_an_update_rolls_out_to_the_selection_from_the_panel(on_the_map: Any) -> None:
    async with on_the_map() as m:
        v = m.v
        await v.page.select_option("#online", "true")
        await v.open_device("gw-green")
        form = v.page.locator("#panel form.rollout")
        await expect(form.locator("button")).to_have_text("Roll out to 2 devices")
        await form.locator("input[name=version]").fill("2.0.0")
        await form.locator("input[name=artifact_url]").fill("http://127.0.0.1:1/fw-2.0.0.bin")
        await form.locator("input[name=checksum]").fill("ab" * 32)
        await form.locator("input[name=size]").fill("1000")
        await form.locator("button").click()
        await expect(form.locator("p")).to_contain_text("started for 2 devices")
        assert m.api.rollouts is not None
        [rollout] = await m.api.rollouts.all()
        assert sorted(rollout.devices) == ["gw-green", "gw-red"]
        await v.shot("rollout")


async def test_a_wrong_token_is_refused(start_api: ApiFactory, visit: Any) -> None:
    async with start_api() as api, visit(api) as v:
        await v.sign_in("not-an-operator-token")
        await expect(v.page.locator(".error")).to_contain_text(
            "That is not an operator token of this API"
        )
        assert urlsplit(v.page.url).path == "/signin"
        assert await v.page.context.cookies() == []
        await v.shot("refused")


# --- what the operator reads when something fails -------------------------------------------


async def test_offline_device_command_timeout_and_expired_session_are_lines_to_act_on(
    nc: NATS, start_shard: ShardFactory, start_api: ApiFactory, visit: Any
) -> None:
    async with start_shard(shard_id="a") as shard, start_api() as api, houses(shard, nc):
        silent = await connected("gw-silent", shard, on_command=lambda _command: None)
        async with visit(api) as v:
            await v.sign_in()
            await ready(v)
            await v.page.fill("#search", "gw-grey")
            await v.open_device("gw-grey")
            await v.page.fill("#panel input[name=command]", "uptime")
            await v.page.click("#panel form.command button")
            output = v.page.locator("#panel .output")
            await expect(output).to_contain_text("device gw-grey is not connected")
            await expect(output).to_contain_text("Wait for it to reconnect")
            await v.shot("offline")

            await v.page.fill("#search", "gw-silent")
            await v.open_device("gw-silent")
            await v.page.fill("#panel input[name=command]", "sleep 60")
            await v.page.fill("#panel input[name=timeout]", "1")
            await v.page.click("#panel form.command button")
            await expect(output).to_contain_text("timed out", timeout=10000)
            await expect(output).to_contain_text("try again")
            await v.shot("timeout")

            api.pages.sessions = type(api.pages.sessions)(api.config.session_ttl)  # all ended
            await v.page.click("#panel form.command button")
            problem = v.page.locator("#problem")
            await expect(problem).to_contain_text("Your session has expired: sign in again.")
            await expect(problem.locator("a")).to_have_attribute("href", "/signin?expired=1")
            await v.shot("expired")
        await silent.close()


async def test_the_api_going_down_is_a_line_and_the_page_comes_back_with_it(
    nc: NATS,
    start_shard: ShardFactory,
    start_fleet_state: FleetStateFactory,
    fleet_config: FleetConfig,
    visit: Any,
) -> None:
    fleet_config = dataclasses.replace(fleet_config, run_state_service=False)
    async with start_shard(shard_id="a") as shard, start_fleet_state(), houses(shard, nc):
        api = OperatorApi(fleet_config)
        await api.start()
        port = api.port
        async with visit(api) as v:
            await v.sign_in()
            await ready(v)
            await api.stop()
            problem = v.page.locator("#problem")
            await expect(problem).to_contain_text("not reachable", timeout=20000)
            await expect(problem).to_contain_text("the page retries by itself")
            await v.shot("api-down")
            api = OperatorApi(dataclasses.replace(fleet_config, port=port))
            await api.start()
            try:
                # A restarted API has forgotten the session: the page says to sign in again.
                await expect(problem).to_contain_text("sign in again", timeout=30000)
                await v.shot("api-back")
            finally:
                await api.stop()
