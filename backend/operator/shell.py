"""Operator shell sessions: an operator's WebSocket relayed to a device's Mender shell.

``ShellRelay.open`` starts the shell before the operator's upgrade is answered, so a device
that cannot give one is an HTTP refusal: Mender's shell "new" with a fresh sid, the
operator's ``user_id`` (stamped by the shard) and the terminal size, answered by the device's
"new" with status 1, or 2 and the reason. ``run`` then relays until one side ends it:

- operator binary frame -> "shell" (the bytes to type); device "shell" -> binary frame;
- operator text frame ``{"resize": [cols, rows]}`` -> "resize" (terminal_width/height);
- operator ``{"stop": true}`` or close -> "stop" to the device, close 1000;
- device "stop" -> close 1000; the shard's "stop" with status 2 (the device disconnected)
  -> close ``DEVICE_GONE`` with its reason; no bytes either way for ``idle_timeout`` ->
  "stop" to the device, close ``IDLE``.

Device messages reach us on ``subjects.relay_subject(device_id, sid)`` (the shard writes in the id
of the device that sent them); ours go through the shard holding the device
(``DeviceRouter.deliver``), one request per frame, which keeps them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from backend.bus import subjects
from backend.bus.routing import DeviceRouter
from backend.operator.errors import ShellRefused
from backend.protocol import envelope as env
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import DeviceTimeout, FleetError, RoutingError

log = logging.getLogger("fleet.shell")

MAX_TERMINAL = 1000
"""Largest terminal width or height accepted (columns, rows)."""
NORMAL = 1000
GOING_AWAY = 1001
DEVICE_GONE = 4100
"""The device disconnected (or its shard stopped answering) during the session."""
IDLE = 4101
"""No bytes either way for the idle timeout."""
MAX_REASON = 120  # a close reason fits in 123 bytes (RFC 6455 §5.5)


def terminal_size(cols: Any, rows: Any) -> tuple[int, int]:
    """(cols, rows) as integers in 1..MAX_TERMINAL, or ValueError saying what is wrong."""
    if not all(type(v) is int and 0 < v <= MAX_TERMINAL for v in (cols, rows)):
        raise ValueError(f"a terminal size is two integers from 1 to {MAX_TERMINAL}")
    return cols, rows


@dataclass(frozen=True, slots=True)
class Ending:
    """How a session ended: the close sent to the operator, and the metrics outcome."""

    code: int
    reason: str
    outcome: str
    tell_device: bool = False


class ShellRelay:
    def __init__(
        self, nc: NATS, router: DeviceRouter, device_id: str, operator: str, idle_timeout: float
    ) -> None:
        self.nc = nc
        self.router = router
        self.device_id = device_id
        self.operator = operator
        self.idle_timeout = idle_timeout
        self.sid = uuid.uuid4().hex
        self._activity = asyncio.Event()
        self._sub: Subscription | None = None
        self._shutdown = asyncio.Event()

    async def open(self, size: tuple[int, int], timeout: float) -> None:
        """Start the device's shell; RoutingError (offline, timeout, refused) if it has none."""
        # Subscribed before "new" goes out: the device's answer cannot overtake us.
        self._sub = await self.nc.subscribe(subjects.relay_subject(self.device_id, self.sid))
        props = {env.PROP_TERMINAL_WIDTH: size[0], env.PROP_TERMINAL_HEIGHT: size[1]}
        await self._send(env.TYP_SHELL_NEW, props=props)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                answer = env.decode((await self._sub.next_msg(timeout=left)).data)
            except TimeoutError:  # nats-py's TimeoutError is one too
                break
            except FleetError:
                continue  # undecodable: not the answer
            if answer.typ == env.TYP_SHELL_NEW:
                if _status(answer) == env.STATUS_ERROR:
                    raise ShellRefused(_text(answer) or "the device refused a shell")
                return
        raise DeviceTimeout(f"device {self.device_id} did not start a shell within {timeout:g}s")

    async def run(self, ws: web.WebSocketResponse, on_bad_input: Callable[[str], None]) -> str:
        """Relay until one side ends the session; returns its outcome (for metrics)."""
        tasks = [
            asyncio.create_task(self._from_operator(ws, on_bad_input)),
            asyncio.create_task(self._from_device(ws)),
            asyncio.create_task(self._idle()),
            asyncio.create_task(self._stopping()),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        ending = next(iter(done)).result()
        if ending.tell_device:
            with contextlib.suppress(RoutingError):
                await self._send(env.TYP_SHELL_STOP)
        await ws.close(code=ending.code, message=ending.reason[:MAX_REASON].encode())
        log.info("shell %s of %s on %s ended: %s", self.sid, self.operator, self.device_id,
                 ending.reason)  # fmt: skip
        return ending.outcome

    def shutdown(self) -> None:
        """The API is stopping: end the session (the device is told)."""
        self._shutdown.set()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None

    # --- the directions ---------------------------------------------------------------------

    async def _from_operator(
        self, ws: web.WebSocketResponse, on_bad_input: Callable[[str], None]
    ) -> Ending:
        try:
            async for frame in ws:
                self._activity.set()
                if frame.type is WSMsgType.BINARY:
                    await self._send(env.TYP_SHELL_DATA, frame.data)
                elif frame.type is WSMsgType.TEXT:
                    ending = await self._control(ws, frame.data, on_bad_input)
                    if ending is not None:
                        return ending
        except RoutingError as exc:
            return Ending(DEVICE_GONE, f"device unreachable: {exc}", "device_gone")
        return Ending(NORMAL, "closed by the operator", "operator", tell_device=True)

    async def _control(
        self, ws: web.WebSocketResponse, text: str, on_bad_input: Callable[[str], None]
    ) -> Ending | None:
        """A text frame: ``{"resize": [cols, rows]}`` or ``{"stop": true}``."""
        request: Any = None
        try:
            request = json.loads(text)
            if not isinstance(request, dict) or not request.keys() & {"resize", "stop"}:
                raise ValueError('send {"resize": [cols, rows]} or {"stop": true}')
            if request.get("stop") is True:
                return Ending(NORMAL, "stopped by the operator", "operator", tell_device=True)
            cols, rows = terminal_size(*request["resize"])
        except (ValueError, TypeError) as exc:
            field = "resize" if isinstance(request, dict) and "resize" in request else "frame"
            on_bad_input(field)
            await ws.send_json({"error": "bad_request", "field": field, "message": str(exc)})
            return None
        props = {env.PROP_TERMINAL_WIDTH: cols, env.PROP_TERMINAL_HEIGHT: rows}
        await self._send(env.TYP_SHELL_RESIZE, props=props)
        return None

    async def _from_device(self, ws: web.WebSocketResponse) -> Ending:
        assert self._sub is not None
        while True:
            try:
                delivered = await self._sub.next_msg(timeout=None)
            except NatsError as exc:
                return Ending(DEVICE_GONE, f"relay lost: {exc}", "device_gone")
            self._activity.set()
            try:
                msg = env.decode(delivered.data)
            except FleetError as exc:
                log.warning("shell %s: undecodable device message: %s", self.sid, exc)
                continue
            if msg.typ == env.TYP_SHELL_DATA:
                try:
                    await ws.send_bytes(msg.body)
                except ConnectionError:
                    return Ending(NORMAL, "the operator went away", "operator", True)
            elif msg.typ == env.TYP_SHELL_STOP:
                if _status(msg) == env.STATUS_ERROR:
                    return Ending(DEVICE_GONE, _text(msg) or "device disconnected", "device_gone")
                return Ending(NORMAL, "the shell ended on the device", "device")

    async def _idle(self) -> Ending:
        """Ends the session after ``idle_timeout`` without a frame either way."""
        while True:
            self._activity.clear()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that comes
                # as the event is set, and the session would never end.
                async with asyncio.timeout(self.idle_timeout):
                    await self._activity.wait()
            except TimeoutError:
                return Ending(IDLE, f"idle for {self.idle_timeout:g}s", "idle", tell_device=True)

    async def _stopping(self) -> Ending:
        await self._shutdown.wait()
        return Ending(GOING_AWAY, "the operator API is stopping", "shutdown", tell_device=True)

    async def _send(self, typ: str, body: bytes = b"", props: dict[str, Any] | None = None) -> None:
        msg = ProtoMsg(env.PROTO_SHELL, typ, self.sid, props, body)
        await self.router.deliver(self.device_id, env.encode(msg), user_id=self.operator)


def _status(msg: ProtoMsg) -> Any:
    return (msg.props or {}).get(env.PROP_STATUS)


def _text(msg: ProtoMsg) -> str:
    return msg.body.decode(errors="replace")
