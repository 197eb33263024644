"""The operator API: the fleet's state, commands and shells on devices (``backend.operator.shell``),
and update rollouts (``backend.operator.rollouts``), over HTTP (aiohttp).

Every endpoint but ``/healthz``, ``/metrics``, ``/openapi.json`` and the fleet map's pages
(``backend.operator.web``) takes an operator's bearer token (``FleetConfig.operator_tokens``)
or the map's session cookie; the operator's id is stamped as ``user_id`` into what reaches
the device, as Mender's deviceconnect does. Errors are JSON
``{"error": <reason>, "message": <text>, "field": <name, for bad input>}``; each is counted in
``fleet_api_rejected_total{reason,field}``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from backend.bus import natsauth, presence, subjects
from backend.bus.auth import BEARER, DEVICE_ID
from backend.bus.routing import DeviceRouter
from backend.lifecycle import Service
from backend.operator import fleetstate, rollouts
from backend.operator.config import FleetConfig
from backend.operator.errors import (
    ApiError,
    BodyTimedOut,
    CommandTimedOut,
    Conflict,
    DeviceRefused,
    HttpRefused,
    InvalidRollout,
    NatsUnavailable,
    OfflineDevice,
    ResourceNotFound,
    RolloutConflict,
    RoutingFailed,
    Unauthenticated,
    UnknownRollout,
    UnsupportedProtocol,
)
from backend.operator.files import FileMetrics, FileRelay, path_of, put_request
from backend.operator.fleetstate import FleetState, wait_for_stop_signal
from backend.operator.portforward import ForwardMetrics, ForwardRelay, target_of
from backend.operator.rollouts import Rollouts
from backend.operator.schema import openapi_document
from backend.operator.shell import MAX_TERMINAL, ShellRelay
from backend.operator.watch import FleetFeed
from backend.operator.web import SESSION_COOKIE, WebPages, is_public
from backend.protocol import envelope as env
from backend.protocol.errors import DeviceError, DeviceOffline, DeviceTimeout, RoutingError
from backend.protocol.session import NotServed

log = logging.getLogger("fleet.api")

MAX_COMMAND_CHARS = 4096
# RFC 8259 §9 lets a parser bound nesting: no request here needs more than a few levels, and
# json.loads would otherwise give up deep inside (RecursionError, a 500) instead of saying so.
MAX_JSON_DEPTH = 16
# Slowloris: a request's head must arrive within this long of the connection opening (or of
# the previous answer); aiohttp's keep-alive timer is its only deadline before a request exists.
HEAD_TIMEOUT = 10.0
# A request body (at most max_body_bytes) must arrive within this long, or the answer is 408.
BODY_TIMEOUT = 10.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPERATOR = web.RequestKey("operator", str)


def bad_field(field: str, message: str) -> ApiError:
    return ApiError(message, field=field)


# --- input --------------------------------------------------------------------------------------


def device_id_of(request: web.Request) -> str:
    device_id = request.match_info["id"]
    if not DEVICE_ID.fullmatch(device_id):
        raise bad_field("id", f"{device_id[:64]!r} is not a device id ([A-Za-z0-9_-]{{1,128}})")
    return device_id


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    health: str | None
    online: bool | None
    limit: int
    cursor: str

    def matches(self, state: fleetstate.DeviceState) -> bool:
        return (self.health is None or state.health == self.health) and (
            self.online is None or state.online == self.online
        )


def device_query(query: Any, config: FleetConfig) -> DeviceQuery:
    health = query.get("state")
    if health not in (None, fleetstate.RED, fleetstate.GREEN):
        raise bad_field("state", "'state' must be 'red' or 'green'")
    online = query.get("online")
    if online not in (None, "true", "false"):
        raise bad_field("online", "'online' must be 'true' or 'false'")
    limit_text = query.get("limit", str(config.page_limit))
    if not limit_text.isdigit() or not 0 < int(limit_text) <= config.max_page_limit:
        raise bad_field("limit", f"'limit' must be an integer from 1 to {config.max_page_limit}")
    cursor = query.get("cursor", "")
    if cursor and not DEVICE_ID.fullmatch(cursor):
        raise bad_field("cursor", "'cursor' must be the next_cursor of a previous page")
    return DeviceQuery(
        health, None if online is None else online == "true", int(limit_text), cursor
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, a JSON object, read within BODY_TIMEOUT."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        message = f"the request body did not arrive within {BODY_TIMEOUT:g}s"
        raise BodyTimedOut(message, field="body") from None
    return json_object(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body, which must be a JSON object in UTF-8 (RFC 8259 §8.1), whatever charset
    its Content-Type claims."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_field("body", f"the request body is not UTF-8 (byte {exc.start})") from None
    too_deep = f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        body = json.loads(text)
    except RecursionError:
        raise bad_field("body", too_deep) from None
    except ValueError as exc:
        raise bad_field("body", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_field("body", "the request body must be a JSON object")
    if _nesting(body) > MAX_JSON_DEPTH:
        raise bad_field("body", too_deep)
    return body


def _nesting(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value; iterative, so a deep one
    cannot exhaust the stack."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def command_request(body: dict[str, Any], config: FleetConfig) -> tuple[str, float]:
    """``{"command": str, "timeout": seconds}`` from a request body, or the field at fault."""
    command = body.get("command")
    if not isinstance(command, str) or not command.strip():
        raise bad_field("command", "'command' must be a non-empty string")
    if len(command) > MAX_COMMAND_CHARS:
        raise bad_field("command", f"'command' is longer than {MAX_COMMAND_CHARS} characters")
    timeout = body.get("timeout", config.command_timeout)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and 0 < timeout <= config.max_command_timeout)
    ):
        raise bad_field(
            "timeout",
            f"'timeout' must be a number of seconds in (0, {config.max_command_timeout:g}]",
        )
    return command, float(timeout)


def shell_size(query: Any) -> tuple[int, int]:
    """The terminal's ``cols`` and ``rows`` query parameters (default 80x24)."""
    size = []
    for name, default in (("cols", "80"), ("rows", "24")):
        text = query.get(name, default)
        if not (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_TERMINAL):
            raise bad_field(name, f"'{name}' must be an integer from 1 to {MAX_TERMINAL}")
        size.append(int(text))
    return size[0], size[1]


def rollout_id_of(request: web.Request) -> str:
    rollout_id = request.match_info["rid"]
    if not DEVICE_ID.fullmatch(rollout_id):
        raise bad_field("id", f"{rollout_id[:64]!r} is not a rollout id")
    return rollout_id


def clipped_output(output: bytes, limit: int) -> tuple[str, bool]:
    """The output as text, cut at ``limit`` bytes with a marker saying how much is missing."""
    if len(output) <= limit:
        return output.decode(errors="replace"), False
    missing = len(output) - limit
    marker = f"\n[output truncated: {missing} of {len(output)} bytes not shown]\n"
    return output[:limit].decode(errors="ignore") + marker, True


# --- metrics ------------------------------------------------------------------------------------


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fleet_api_requests", "Requests, by route, method and status",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "fleet_api_request_seconds", "Time to answer a request, by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "fleet_api_rejected", "Requests refused, by reason and the field at fault",
            ["reason", "field"], registry=r,
        )  # fmt: skip
        self.commands = Counter(
            "fleet_api_commands", "Operator commands, by outcome", ["outcome"], registry=r
        )
        self.shells = Counter(
            "fleet_api_shell_sessions", "Shell sessions by outcome: how they ended (operator, "
            "device, device_error, device_gone, idle, shutdown) or why they did not open "
            "(offline, timeout, unsupported, device_error, shell_refused...)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.open_shells = Gauge(
            "fleet_api_shell_sessions_open", "Shell sessions relayed now", registry=r
        )


# --- the service ---------------------------------------------------------------------------------


class OperatorApi(Service):
    """``start()`` connects NATS (and a fleet state instance if configured) and listens."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.metrics = ApiMetrics()
        self.port = config.port
        self.state: FleetState | None = FleetState(config) if config.run_state_service else None
        self.nc: NATS | None = None
        self._devices: KeyValue | None = None
        self._presence: KeyValue | None = None
        self._router: DeviceRouter | None = None
        self._liveness: presence.Liveness | None = None
        self._runner: web.AppRunner | None = None
        self.rollouts: Rollouts | None = None
        self._shells: set[ShellRelay] = set()
        self.pages = WebPages(config, self._rejected)
        self.feed: FleetFeed | None = None
        self._forwards: set[ForwardRelay] = set()
        self.forward_metrics = ForwardMetrics(self.metrics.registry)
        self.file_metrics = FileMetrics(self.metrics.registry)

    async def start(self) -> None:
        self.nc = await nats.connect(
            list(self.config.nats_urls), name=self.config.instance_id, max_reconnect_attempts=-1,
            **natsauth.connect_options(natsauth.API, self.config),
        )  # fmt: skip
        js = self.nc.jetstream()
        replicas = self.config.stream_replicas
        self._presence = await subjects.ensure_streams(js, replicas)
        self._devices = await subjects.ensure_devices_bucket(js, replicas)
        shards = await subjects.ensure_shards_bucket(js, presence.SHARD_TTL, replicas)
        self._liveness = presence.Liveness(shards)
        self._router = DeviceRouter(self.nc, self._presence, self._liveness)
        self.rollouts = Rollouts(
            self.config, self.nc, self._router, self._devices, self.metrics.registry
        )
        await self.rollouts.start()
        self.feed = FleetFeed(self._devices)
        if self.state is not None:
            await self.state.start()
        self._runner = web.AppRunner(self.app(), access_log=None, keepalive_timeout=HEAD_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("operator API listening on %s:%d", self.config.host, self.port)
        if not self.config.operator_tokens:
            log.warning("no operator tokens configured: every device request will get 401")

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()  # closes the map pages' live feeds
        if self._runner is not None:
            await self._runner.cleanup()  # ends shells, finishes the requests in flight
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.state is not None:
            await self.state.stop()
        if self.nc is not None:
            try:
                await self.nc.drain()
            except NatsError as exc:
                log.warning("closing NATS: %s", exc)
        log.info("operator API stopped")

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._observe, self._authenticate],
            client_max_size=self.config.max_body_bytes,
        )
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/devices", self.list_devices)
        app.router.add_get("/devices/{id}", self.get_device)
        app.router.add_post("/devices/{id}/commands", self.run_command)
        app.router.add_get("/devices/{id}/shell", self.open_shell)
        app.router.add_get("/devices/{id}/port-forward", self.open_port_forward)
        app.router.add_get("/devices/{id}/files/stat", self.stat_file)
        app.router.add_get("/devices/{id}/files/download", self.download_file)
        app.router.add_get("/devices/{id}/files/upload", self.upload_file)
        app.router.add_get("/rollouts", self.list_rollouts)
        app.router.add_post("/rollouts", self.create_rollout)
        app.router.add_get("/rollouts/{rid}", self.get_rollout)
        app.router.add_post("/rollouts/{rid}/{action:pause|resume|abort}", self.control_rollout)
        app.router.add_get("/fleet/live", self._live)
        self.pages.add_routes(app)
        app.on_shutdown.append(self._end_shells)
        app.on_shutdown.append(self._end_forwards)
        return app

    # --- middlewares ---------------------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors become JSON answers; every request is counted and timed."""
        started = time.monotonic()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = self._refusal(HttpRefused(exc))
        except ApiError as exc:
            response = self._refusal(exc)
        except NatsError as exc:  # never a 500: the request is fine, NATS is not (yet)
            log.warning("%s %s: NATS: %r", request.method, request.path, exc)
            response = self._refusal(NatsUnavailable(f"NATS did not answer ({exc}); retry"))
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.metrics.requests.labels(route, request.method, str(response.status)).inc()
        self.metrics.latency.labels(route).observe(time.monotonic() - started)
        return response

    def _rejected(self, reason: str, field: str) -> None:
        self.metrics.rejected.labels(reason, field).inc()

    def _refusal(self, exc: ApiError) -> web.Response:
        self._rejected(exc.reason, exc.field or "")
        body: dict[str, Any] = {"error": exc.reason, "message": str(exc)}
        if exc.field is not None:
            body["field"] = exc.field
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        response = web.json_response(body, status=exc.status, headers=headers)
        if exc.status == 408:  # RFC 9110 §15.5.9: the server closes rather than waits on
            response.force_close()
        return response

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not is_public(request.path):
            request[OPERATOR] = self._operator(request)
        return await handler(request)

    def _operator(self, request: web.Request) -> str:
        """The operator of a bearer token or, without one, of the fleet map's session cookie."""
        authorization = request.headers.get("Authorization")
        if authorization is None and SESSION_COOKIE in request.cookies:
            return self.pages.operator_of(request)
        authorization = authorization or ""
        if authorization[: len(BEARER)].lower() != BEARER:
            raise Unauthenticated(
                "missing 'Authorization: Bearer <operator token>' header (or, in a browser, "
                "sign in at /signin)"
            )
        operator = self.config.operator_of(authorization[len(BEARER) :].strip())
        if operator is None:
            raise Unauthenticated("unknown operator token")
        return operator

    # --- public endpoints ----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        ready = self.nc is not None and self.nc.is_connected
        return web.Response(status=200 if ready else 503, text="ok\n" if ready else "no NATS\n")

    async def metrics_page(self, request: web.Request) -> web.Response:
        pages = [generate_latest(self.metrics.registry)]
        if self.state is not None:
            pages.append(generate_latest(self.state.metrics.registry))
        response = web.Response(body=b"".join(pages))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.config))

    # --- devices -------------------------------------------------------------------------------

    async def list_devices(self, request: web.Request) -> web.Response:
        query = device_query(request.query, self.config)
        devices, next_cursor = await self._page(query)
        return web.json_response({"devices": devices, "next_cursor": next_cursor})

    async def _page(self, query: DeviceQuery) -> tuple[list[dict[str, Any]], str | None]:
        """Devices in id order after the cursor; a filtered page reads at most max_page_scan
        entries, so it may hold fewer than ``limit``: follow next_cursor until it is null."""
        assert self._devices is not None and self._liveness is not None
        keys = await _sorted_keys(self._devices)
        shards = await self._liveness.shards()
        start = bisect.bisect_right(keys, query.cursor) if query.cursor else 0
        window = keys[start : start + self.config.max_page_scan]
        found: list[dict[str, Any]] = []
        for offset in range(0, len(window), query.limit):
            chunk = window[offset : offset + query.limit]
            loaded = await asyncio.gather(*(fleetstate.load(self._devices, k) for k in chunk))
            for key, (stored, _revision) in zip(chunk, loaded, strict=True):
                state = fleetstate.shown(stored, shards) if stored else None
                if state is not None and query.matches(state):
                    found.append(state.summary())
                    if len(found) == query.limit:
                        return found, key if key != keys[-1] else None
        last = window[-1] if window else None
        return found, last if last is not None and last != keys[-1] else None

    async def get_device(self, request: web.Request) -> web.Response:
        assert self._devices is not None and self._liveness is not None
        device_id = device_id_of(request)
        state, _revision = await fleetstate.load(self._devices, device_id)
        if state is None:
            raise ResourceNotFound(f"no device {device_id} is known to the fleet")
        state = fleetstate.shown(state, await self._liveness.shards())
        return web.json_response(state.detail())

    async def run_command(self, request: web.Request) -> web.Response:
        assert self._router is not None
        device_id = device_id_of(request)
        command, timeout = command_request(await json_body(request), self.config)
        operator = request[OPERATOR]
        try:
            result = await self._router.run_command(
                device_id, command, timeout=timeout, user_id=operator
            )
        except RoutingError as exc:
            error = await self.routing_error(device_id, exc)
            self.metrics.commands.labels(error.reason).inc()
            raise error from None
        self.metrics.commands.labels("ok").inc()
        log.info("operator %s ran a command on %s: exit %d", operator, device_id, result.exit_code)
        output, truncated = clipped_output(result.output, self.config.max_output_bytes)
        return web.json_response(
            {"device": device_id, "exit_code": result.exit_code, "output": output,
             "truncated": truncated, "output_bytes": len(result.output),
             "duration": result.duration}
        )  # fmt: skip

    async def routing_error(
        self, device_id: str, exc: RoutingError, needs: str = "commands need"
    ) -> ApiError:
        """The API's answer for a request to a device that failed (``needs``: what the
        offline answer says needs the device online); every device endpoint uses it."""
        if isinstance(exc, DeviceTimeout):
            return CommandTimedOut(str(exc))
        if isinstance(exc, NotServed):
            return UnsupportedProtocol(str(exc))
        if isinstance(exc, DeviceError):
            return DeviceRefused(str(exc))
        if not isinstance(exc, DeviceOffline):
            return RoutingFailed(str(exc))
        assert self._presence is not None
        known, _revision = await presence.lookup(self._presence, device_id)
        if known is None:
            return ResourceNotFound(f"no device {device_id} has ever connected")
        return OfflineDevice(f"device {device_id} is not connected; {needs} it online")

    async def _live(self, request: web.Request) -> web.StreamResponse:
        assert self.feed is not None
        return await self.feed.handle(request)

    # --- shell ---------------------------------------------------------------------------------

    async def open_shell(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket relayed to the device's shell (``backend.operator.shell``); refusals
        (offline, unknown, a device without a shell) are HTTP answers, before the upgrade."""
        assert self.nc is not None and self._router is not None
        device_id = device_id_of(request)
        size = shell_size(request.query)
        ws = web.WebSocketResponse(heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise bad_field("upgrade", "GET /devices/{id}/shell takes a WebSocket upgrade")
        relay = ShellRelay(
            self.nc, self._router, device_id, request[OPERATOR], self.config.shell_idle_timeout
        )
        try:
            await relay.open(size, self.config.shell_start_timeout)
        except RoutingError as exc:
            await relay.close()
            self.metrics.shells.labels(exc.reason).inc()
            raise await self.routing_error(device_id, exc, "a shell needs") from None
        self._shells.add(relay)
        self.metrics.open_shells.inc()
        try:
            await ws.prepare(request)
            outcome = await relay.run(ws, self._bad_shell_input)
        finally:
            self._shells.discard(relay)
            self.metrics.open_shells.dec()
            await relay.close()
        self.metrics.shells.labels(outcome).inc()
        return ws

    def _bad_shell_input(self, field: str) -> None:
        self.metrics.rejected.labels("bad_request", field).inc()

    async def _end_shells(self, app: web.Application) -> None:
        for relay in self._shells:
            relay.shutdown()

    # --- port forward -------------------------------------------------------------------------

    async def open_port_forward(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket carrying connections to one target of the device
        (``backend.operator.portforward``); an offline device is refused before the upgrade."""
        assert self.nc is not None and self._router is not None
        device_id = device_id_of(request)
        target = target_of(request.query)
        ws = web.WebSocketResponse(heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            raise bad_field("upgrade", "GET /devices/{id}/port-forward takes a WebSocket upgrade")
        await self._require_served(device_id, env.PROTO_PORT_FORWARD, "a port forward needs")
        relay = ForwardRelay(
            self.nc, self._router, device_id, request[OPERATOR], target,
            self.config.forward_idle_timeout, self.forward_metrics,
        )  # fmt: skip
        self._forwards.add(relay)
        try:
            await ws.prepare(request)
            outcome = await relay.run(ws)
        finally:
            self._forwards.discard(relay)
            await relay.close()
        self.forward_metrics.forwards.labels(outcome).inc()
        return ws

    async def _end_forwards(self, app: web.Application) -> None:
        for relay in self._forwards:
            relay.shutdown()

    # --- file transfer ------------------------------------------------------------------------

    async def stat_file(self, request: web.Request) -> web.Response:
        device_id, path = device_id_of(request), path_of(request.query)
        async with self._file_relay(request, device_id) as relay:
            await self._require_served(device_id, env.PROTO_FILE_TRANSFER, "a file transfer needs")
            try:
                info = await relay.stat(path)
            except ApiError:
                self.file_metrics.transfers.labels("stat", "refused").inc()
                raise
        self.file_metrics.transfers.labels("stat", "ok").inc()
        return web.json_response(
            {"path": info.path, "size": info.size, "mode": info.mode, "uid": info.uid,
             "gid": info.gid, "modtime": info.modtime}
        )  # fmt: skip

    async def download_file(self, request: web.Request) -> web.StreamResponse:
        device_id, path = device_id_of(request), path_of(request.query)
        ws = await self._transfer_socket(request, device_id)
        async with self._file_relay(request, device_id) as relay:
            await ws.prepare(request)
            await self._transfer(
                ws, "download", relay.download(ws, path, self.config.max_transfer_bytes)
            )
        return ws

    async def upload_file(self, request: web.Request) -> web.StreamResponse:
        device_id = device_id_of(request)
        put = put_request(request.query, self.config.max_transfer_bytes)
        ws = await self._transfer_socket(request, device_id)
        async with self._file_relay(request, device_id) as relay:
            await ws.prepare(request)
            await self._transfer(ws, "upload", relay.upload(ws, put))
        return ws

    def _file_relay(self, request: web.Request, device_id: str) -> FileRelay:
        assert self.nc is not None and self._router is not None
        return FileRelay(self.nc, self._router, device_id, request[OPERATOR],
                         self.config.transfer_timeout)  # fmt: skip

    async def _transfer_socket(self, request: web.Request, device_id: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4 << 20)
        if not ws.can_prepare(request).ok:
            raise bad_field("upgrade", f"{request.path} takes a WebSocket upgrade")
        await self._require_served(device_id, env.PROTO_FILE_TRANSFER, "a file transfer needs")
        return ws

    async def _transfer(self, ws: web.WebSocketResponse, kind: str, moving: Awaitable[int]) -> None:
        try:
            size = await moving
        except ConnectionError:  # the operator went away
            self.file_metrics.transfers.labels(kind, "failed").inc()
        except (ValueError, RoutingError) as exc:
            self.file_metrics.transfers.labels(kind, "failed").inc()
            await ws.send_json({"op": "error", "message": f"{kind} failed: {exc}"})
        else:
            self.file_metrics.transfers.labels(kind, "ok").inc()
            self.file_metrics.bytes.labels(kind).inc(size)
        await ws.close()

    async def _require_served(self, device_id: str, proto: int, needs: str) -> None:
        assert self._router is not None
        try:
            await self._router.require(device_id, proto)
        except RoutingError as exc:
            raise await self.routing_error(device_id, exc, needs) from None

    # --- rollouts ------------------------------------------------------------------------------

    async def create_rollout(self, request: web.Request) -> web.Response:
        assert self.rollouts is not None
        body = await json_body(request)
        with _rollout_errors():
            spec = rollouts.rollout_spec(body, self.config)
            rollout = await self.rollouts.create(spec, request[OPERATOR])
        return web.json_response(rollout.summary(), status=201)

    async def list_rollouts(self, request: web.Request) -> web.Response:
        assert self.rollouts is not None
        found = await self.rollouts.all()
        return web.json_response({"rollouts": [rollout.summary() for rollout in found]})

    async def get_rollout(self, request: web.Request) -> web.Response:
        assert self.rollouts is not None
        with _rollout_errors():
            rollout = await self.rollouts.get(rollout_id_of(request))
        return web.json_response(rollout.detail())

    async def control_rollout(self, request: web.Request) -> web.Response:
        assert self.rollouts is not None
        rollout_id, action = rollout_id_of(request), request.match_info["action"]
        with _rollout_errors():
            rollout = await self.rollouts.control(rollout_id, action)
        log.info("operator %s: %s rollout %s", request[OPERATOR], action, rollout_id)
        return web.json_response(rollout.detail())


@contextlib.contextmanager
def _rollout_errors() -> Iterator[None]:
    """The rollout service's refusals as HTTP answers."""
    try:
        yield
    except InvalidRollout as exc:
        raise bad_field(exc.field, str(exc)) from None
    except UnknownRollout as exc:
        raise ResourceNotFound(str(exc)) from None
    except RolloutConflict as exc:
        raise Conflict(str(exc)) from None


async def _sorted_keys(kv: KeyValue) -> list[str]:
    try:
        return sorted(await kv.keys())
    except NoKeysError:
        return []


async def serve(config: FleetConfig) -> None:
    """Run the operator API until SIGTERM or SIGINT, then stop it."""
    api = OperatorApi(config)
    await api.start()
    await wait_for_stop_signal()
    await api.stop()
