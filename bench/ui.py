"""The fleet map at scale: a fleet state of N devices, the page in headless Chromium (Debian's,
through Playwright), and the operator API as its own process (``fleet api --no-state``).

The devices' entries are written straight into the devices bucket (as the fleet state would:
a location over the real places the simulator uses, ~5% with an open alert, ~8% offline), so
the figures are the map's and the API's, not the fleet state's. Each figure beside a baseline
measured in the same run:

- first full render: from navigating to ``/`` to the page having indexed and drawn the fleet
  (``body[data-ready]``), signed in; baseline: the same page with a 1,000-device fleet, first;
- pan and zoom frames per second: requestAnimationFrame callbacks while the map pans (a 200 px
  pan every 0.3 s) and zooms in and out (animated), for a few seconds each, and the longest
  frame; baseline: the same motion with a filter that matches no device (the basemap only);
- the fleet message: its size as the page received it and deflated (permessage-deflate is on
  the wire); baseline: the same devices as the JSON API's device objects (``GET /devices``);
- deltas: the API process's CPU while ``--changes`` entries change per second (a device
  raising or clearing an alert), against the same process idle for as long; how long a
  change takes from being stored in the bucket to reaching a live-feed client (median, max);
  and the page's pan frames per second meanwhile (it re-indexes the fleet as deltas come);
- alert to red mark: a test device on a shard (in this process, with a fleet state) raises
  an alert; from the shard's ack (JetStream has stored it) until the page, showing the full
  fleet with that device open, draws its mark red; ``--alerts`` times (median, max).

    python bench/ui.py --devices 100000 --changes 1000 --alerts 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js.kv import KeyValue
from playwright.async_api import Page, async_playwright

from backend.bus import subjects
from backend.bus.auth import issue_device_token
from backend.devstack import browser, process
from backend.devstack.natsserver import NatsServer
from backend.devstack.testdevice import TestDevice
from backend.operator.config import FleetConfig
from backend.operator.fleetstate import DeviceState, FleetState, OpenAlert
from backend.operator.watch import FIELDS, encode, row_of
from backend.protocol import messages
from backend.shard import Shard, ShardConfig
from simulator.places import house_location

BASELINE_DEVICES = 1000
E2E_DEVICE = "gw-e2e"
SELECTED_RED = "#map .mark.selected.mark-red"
SELECTED_GREEN = "#map .mark.selected.mark-green"
FIRMWARES = ("1.4.2", "1.5.0", "1.5.1", "2.0.0")
SMOKE = OpenAlert("a-1", "smoke", "critical", "Smoke detected in the kitchen",
                  "Call the fire brigade", 0.0, 1)  # fmt: skip
MOTION_SECONDS = 4.0
PAN_AND_ZOOM = """async ([motion, ms]) => {
  const map = window.fleetMap.map.map;
  let frames = 0, longest = 0, last = performance.now();
  const start = last;
  await new Promise((done) => {
    const frame = (now) => {
      frames += 1; longest = Math.max(longest, now - last); last = now;
      if (now - start < ms) requestAnimationFrame(frame); else done();
    };
    requestAnimationFrame(frame);
    let step = 0;
    const move = setInterval(() => {
      if (performance.now() - start > ms - 300) { clearInterval(move); return; }
      step += 1;
      if (motion === "pan") map.panBy([step % 8 < 4 ? 200 : -200, 0], { duration: 0.25 });
      else map.setZoom(step % 2 ? 4 : 3, { animate: true });
    }, 300);
  });
  return { fps: frames / ((last - start) / 1000), longest };
}"""


def device(index: int, rng: random.Random) -> DeviceState:
    device_id = f"gw-{index:06d}"
    state = DeviceState(
        device_id, online=rng.random() > 0.08, shard="shard-a",
        since=time.time() - rng.uniform(60, 86400), firmware=rng.choice(FIRMWARES),
        inventory=house_location(device_id),
    )  # fmt: skip
    if rng.random() < 0.05:
        state.alerts["smoke"] = SMOKE
    return state


async def fill(kv: KeyValue, states: list[DeviceState]) -> None:
    for offset in range(0, len(states), 500):
        chunk = states[offset : offset + 500]
        await asyncio.gather(*(kv.put(s.device, s.encode()) for s in chunk))


async def later(delay: float, job: Any) -> Any:
    await asyncio.sleep(delay)
    return await job


def start_api(run_dir: Path, nats_url: str, token: str) -> tuple[subprocess.Popen[bytes], str]:
    tokens = run_dir / "operator-tokens.json"
    tokens.write_text(json.dumps({token: "bench"}))
    (port,) = process.free_ports(1, "127.0.0.1")
    argv = [sys.executable, "-m", "backend.cli", "api", "--port", str(port), "--no-state",
            "--nats-url", nats_url, "--operator-tokens-file", str(tokens)]  # fmt: skip
    log_file = run_dir / "api.log"
    api = process.spawn(argv, log_file)
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: process.answers_ok(f"{url}/healthz"), api, "operator API", log_file)
    return api, url


async def first_render(page: Page, url: str) -> tuple[float, int]:
    """Seconds from navigating to / to the fleet drawn, and the fleet message's size."""
    sizes: list[int] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: sizes.append(len(f))))
    await page.goto(f"{url}/", wait_until="commit")
    await page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)
    elapsed = await page.evaluate("performance.now()")
    return elapsed / 1000, max(sizes, default=0)


async def motion(page: Page, what: str) -> dict[str, float]:
    result: dict[str, float] = await page.evaluate(PAN_AND_ZOOM, [what, MOTION_SECONDS * 1000])
    return result


async def filtered_to_nothing(page: Page, nothing: bool) -> None:
    await page.fill("#search", "no-such-device" if nothing else "")
    await page.dispatch_event("#search", "input")
    await page.wait_for_timeout(1500)


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/signin")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)


async def deltas(
    kv: KeyValue, states: list[DeviceState], api: subprocess.Popen[bytes], url: str, token: str,
    rate: int, seconds: float, page: Page,
) -> dict[str, Any]:  # fmt: skip
    """API CPU idle, then while ``rate`` entries change per second (the page panning
    meanwhile); store-to-client latency."""
    stored: dict[str, float] = {}
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.ws_connect(f"{url}/fleet/live", max_msg_size=0) as ws,
    ):
        await ws.receive(timeout=120)  # the fleet
        reader = asyncio.create_task(arrivals(ws, stored, latencies))
        idle_start = process.cpu_seconds(api.pid)
        await asyncio.sleep(seconds)
        idle = process.cpu_seconds(api.pid) - idle_start
        busy_start = process.cpu_seconds(api.pid)
        pan = later(seconds / 2 - MOTION_SECONDS / 2, motion(page, "pan"))
        changed, panned = await asyncio.gather(change(kv, states, rate, seconds, stored), pan)
        await asyncio.sleep(1.0)  # the last flush
        busy = process.cpu_seconds(api.pid) - busy_start
        reader.cancel()
    return {
        "changes": changed, "idle_cpu": idle / seconds, "busy_cpu": busy / (seconds + 1.0),
        "cpu_per_change_us": (busy - idle) / changed * 1e6, "pan_during": panned,
        "latency_median": statistics.median(latencies), "latency_max": max(latencies),
    }  # fmt: skip


async def arrivals(
    ws: aiohttp.ClientWebSocketResponse, stored: dict[str, float], latencies: list[float]
) -> None:
    """For each changed device a delta brings: how long after it was stored."""
    async for frame in ws:
        arrived = time.monotonic()
        rows = json.loads(frame.data)["rows"]
        latencies.extend(arrived - stored.pop(row[0]) for row in rows if row[0] in stored)


async def change(
    kv: KeyValue, states: list[DeviceState], rate: int, seconds: float, stored: dict[str, float]
) -> int:
    """Flip ``rate`` devices a second between red and green, in tenths of a second."""
    rng = random.Random(2)
    changed, deadline = 0, time.monotonic() + seconds
    while (now := time.monotonic()) < deadline:
        batch = rng.sample(states, max(1, rate // 10))
        for state in batch:
            state.alerts = {} if state.alerts else {"smoke": SMOKE}
            stored[state.device] = time.monotonic()
        await asyncio.gather(*(kv.put(s.device, s.encode()) for s in batch))
        changed += len(batch)
        await asyncio.sleep(max(0.0, now + 0.1 - time.monotonic()))
    return changed


async def alert_to_red(page: Page, nats_url: str, count: int) -> dict[str, float]:
    """Seconds from an alert's ack (stored) to the open device's mark drawn red."""
    secret = secrets.token_hex(16)
    shard_config = ShardConfig(port=0, nats_urls=(nats_url,), jwt_secret=secret)
    state_config = FleetConfig(nats_urls=(nats_url,), fetch_timeout=0.5)
    seconds: list[float] = []
    async with Shard(shard_config) as shard, FleetState(state_config):
        url = f"ws://127.0.0.1:{shard.port}"
        async with TestDevice(E2E_DEVICE, issue_device_token(E2E_DEVICE, secret), url) as device:
            await asyncio.wait_for(device.handshake.wait(), 10)
            await device.send_status(messages.Status("1.4.2", {}, time.time(),
                                                     house_location(E2E_DEVICE)))  # fmt: skip
            await open_on_full_fleet(page, E2E_DEVICE)
            for n in range(count):
                alert = messages.Alert(f"e2e-{n}", "smoke", "critical", "raised", "Smoke", "")
                await device.send_alert(alert)
                await asyncio.wait_for(device.wait_acked(alert.id), 10)
                stored = time.monotonic()
                await page.wait_for_selector(SELECTED_RED, state="attached", timeout=30_000)
                seconds.append(time.monotonic() - stored)
                clear = messages.Alert(f"e2e-{n}-clear", "smoke", "critical", "cleared")
                await device.send_alert(clear)
                await page.wait_for_selector(SELECTED_GREEN, state="attached", timeout=30_000)
    return {"median": statistics.median(seconds), "max": max(seconds), "count": count}


async def open_on_full_fleet(page: Page, device_id: str) -> None:
    """Find the device (Enter in the search opens the first match and brings it into view),
    then show the whole fleet again: it stays open."""
    has = "(id) => window.fleetMap.fleet.rows.has(id)"
    await page.wait_for_function(has, arg=device_id, timeout=30_000)
    await page.fill("#search", device_id)
    await page.press("#search", "Enter")
    await page.wait_for_selector(SELECTED_GREEN, state="attached", timeout=30_000)
    await filtered_to_nothing(page, False)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = args.run_dir or Path("runs") / time.strftime("bench-ui-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    states = [device(i, rng) for i in range(args.devices)]
    token = secrets.token_hex(16)
    figures: dict[str, Any] = {"devices": args.devices, "run_dir": str(run_dir)}
    with NatsServer(run_dir / "nats") as server:
        nc = await nats.connect(server.url)
        kv = await subjects.ensure_devices_bucket(nc.jetstream())
        await fill(kv, states[:BASELINE_DEVICES])
        api, url = start_api(run_dir, server.url, token)
        try:
            async with async_playwright() as playwright:
                chromium = await browser.launch(playwright)
                page = await chromium.new_page(viewport={"width": 1400, "height": 850})
                await sign_in(page, url, token)
                figures["render_baseline"], _ = await first_render(page, url)
                started = time.monotonic()
                await fill(kv, states[BASELINE_DEVICES:])
                figures["fill_seconds"] = time.monotonic() - started
                await page.close()  # a fresh page: nothing cached but the HTTP cache
                page = await chromium.new_page(viewport={"width": 1400, "height": 850})
                await sign_in(page, url, token)
                figures["render"], figures["fleet_bytes"] = await first_render(page, url)
                await page.screenshot(path=run_dir / "fleet.png")
                for what in ("pan", "zoom"):
                    figures[what] = await motion(page, what)
                await filtered_to_nothing(page, True)
                for what in ("pan", "zoom"):
                    figures[f"{what}_baseline"] = await motion(page, what)
                await filtered_to_nothing(page, False)
                figures.update(payloads(states))
                figures["deltas"] = await deltas(
                    kv, states, api, url, token, args.changes, 20.0, page
                )
                figures["alert_to_red"] = await alert_to_red(page, server.url, args.alerts)
                await page.screenshot(path=run_dir / "alert.png")
                await chromium.close()
        finally:
            process.stop(api)
            await nc.close()
    (run_dir / "ui.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def payloads(states: list[DeviceState]) -> dict[str, int]:
    compact = encode({"type": "fleet", "fields": FIELDS, "rows": [row_of(s) for s in states]})
    objects = json.dumps({"devices": [s.summary() for s in states]}).encode()
    deflate = zlib.compressobj(wbits=-15)  # raw deflate, as permessage-deflate (RFC 7692)
    wire = len(deflate.compress(compact.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH))
    return {"compact_bytes": len(compact.encode()), "compact_deflated": wire,
            "objects_bytes": len(objects)}  # fmt: skip


def report(f: dict[str, Any]) -> str:
    d = f["deltas"]
    mib = 1024 * 1024
    return "\n".join([
        f"fleet map, {f['devices']:,} devices (baseline: {BASELINE_DEVICES:,};"
        f" run dir {f['run_dir']})",
        f"  first full render      {f['render']:.2f} s   (baseline {f['render_baseline']:.2f} s;"
        " goal <= 3 s)",
        f"  pan                    {f['pan']['fps']:.0f} frames/s, longest frame"
        f" {f['pan']['longest']:.0f} ms   (basemap only: {f['pan_baseline']['fps']:.0f} frames/s,"
        f" {f['pan_baseline']['longest']:.0f} ms; goal >= 30)",
        f"  zoom                   {f['zoom']['fps']:.0f} frames/s, longest frame"
        f" {f['zoom']['longest']:.0f} ms   (basemap only: {f['zoom_baseline']['fps']:.0f}"
        f" frames/s, {f['zoom_baseline']['longest']:.0f} ms)",
        f"  fleet message          {f['fleet_bytes'] / mib:.1f} MiB as received,"
        f" {f['compact_deflated'] / mib:.1f} MiB deflated on the wire   (as GET /devices"
        f" objects: {f['objects_bytes'] / mib:.1f} MiB)",
        f"  deltas                 {d['changes'] / 20:.0f} changes/s: API CPU"
        f" {d['busy_cpu']:.1%} of a core, {d['cpu_per_change_us']:.0f} us per change"
        f"   (idle: {d['idle_cpu']:.1%})",
        f"  stored -> feed client  median {d['latency_median'] * 1000:.0f} ms,"
        f" max {d['latency_max'] * 1000:.0f} ms",
        f"  pan during the deltas  {d['pan_during']['fps']:.0f} frames/s, longest frame"
        f" {d['pan_during']['longest']:.0f} ms (the page re-indexes the fleet once a second)",
        f"  alert stored -> red    median {f['alert_to_red']['median']:.2f} s, max"
        f" {f['alert_to_red']['max']:.2f} s over {f['alert_to_red']['count']} alerts"
        " (goal <= 2 s)",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="devices in the fleet state")
    parser.add_argument("--changes", type=int, default=1000, help="entry changes per second")
    parser.add_argument("--alerts", type=int, default=10, help="alerts timed to a red mark")
    parser.add_argument("--run-dir", type=Path, help="default: runs/bench-ui-<time>")
    figures = asyncio.run(run(parser.parse_args()))
    print(report(figures))


if __name__ == "__main__":
    main()
