"""Operator shell sessions: an operator's WebSocket relayed to a device's Mender shell.

``ShellRelay.open`` starts the shell before the operator's upgrade is answered, so a device
that cannot give one is an HTTP refusal: Mender's shell "new" with a fresh sid, the
operator's ``user_id`` (stamped by the shard) and the terminal size, answered by the device's
"new" with status 1, or 2 and the reason (e.g. "user has too many open sessions"), or by a
control "error" (a device without a shell handler). A device whose "accept" did not list the
shell is refused by its shard before anything is sent (``NotServed``). ``run`` then relays
until one side ends it:

- operator binary frame -> "shell" (the bytes to type); device "shell" -> binary frame;
- operator text frame ``{"resize": [cols, rows]}`` -> "resize" (terminal_width/height);
- operator ``{"stop": true}`` or close -> "stop" to the device, close 1000;
- device shell "ping" -> "pong" with its sid: mender-connect kills a session whose pong is
  60 + 5 s late (its health check);
- device "stop" -> "stop" back (mender-connect keeps the session, and the user's slot,
  until the server's stop), then close 1000 "shell exited" for a normal exit (the pty's
  "input/output error"), or ``DEVICE_ENDED`` with the device's text for any other end; a
  status-2 "shell" (input for a session the device no longer has) ends it the same way;
- device control "error" for the sid -> close ``DEVICE_ERROR`` with its text;
- the shard's "stop" (marked ``subjects.RELAY_END_HEADER``: the device disconnected) -> close
  ``DEVICE_GONE`` with its reason; no bytes either way for ``idle_timeout`` -> "stop" to the
  device, close ``IDLE``.

Device messages reach us on ``subjects.relay_subject(device_id, sid)`` (the shard writes in the id
of the device that sent them); ours go through the shard holding the device
(``DeviceRouter.deliver``), one request per frame, which keeps them in order. Many relays may
run at once, for one operator or several, on one device or many: each has its own sid.
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
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from backend.bus import subjects
from backend.bus.routing import DeviceRouter, relayed_error
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
DEVICE_ENDED = 4102
"""The device ended the session other than by a normal exit (its text is the reason)."""
DEVICE_ERROR = 4103
"""The device answered the session with a control "error" (its text is the reason)."""
SHELL_EXITED = "shell exited"
NORMAL_EXIT_TEXTS = ("input/output error", "EOF")
"""How a device's last words end when its shell exited normally: mender-connect's pty read
fails with "read /dev/ptmx: input/output error"."""
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
            if (error := relayed_error(self.device_id, answer)) is not None:
                raise error
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
            try:
                msg = env.decode(delivered.data)
            except FleetError as exc:
                log.warning("shell %s: undecodable device message: %s", self.sid, exc)
                continue
            if msg.typ == env.TYP_PING:  # the device's health check: not the operator's activity
                await self._answer_ping()
                continue
            self._activity.set()
            ending = self._device_ending(msg, delivered)
            if ending is not None:
                return ending
            if msg.typ == env.TYP_SHELL_DATA:
                try:
                    await ws.send_bytes(msg.body)
                except ConnectionError:
                    return Ending(NORMAL, "the operator went away", "operator", True)

    async def _answer_ping(self) -> None:
        with contextlib.suppress(RoutingError):  # the device gone: its stop follows
            await self._send(env.TYP_PONG)

    def _device_ending(self, msg: ProtoMsg, delivered: Msg) -> Ending | None:
        """How ``msg`` ends the session, if it does."""
        if (error := relayed_error(self.device_id, msg)) is not None:
            return Ending(DEVICE_ERROR, str(error), "device_error")
        if msg.typ == env.TYP_SHELL_STOP and subjects.RELAY_END_HEADER in (delivered.headers or {}):
            return Ending(DEVICE_GONE, _text(msg) or "device disconnected", "device_gone")
        refused = msg.typ == env.TYP_SHELL_DATA and _status(msg) == env.STATUS_ERROR
        if msg.typ != env.TYP_SHELL_STOP and not refused:
            return None
        # The device's own end: it keeps the session registered until our "stop".
        text = _text(msg).strip()
        if _status(msg) != env.STATUS_ERROR or not text or text.endswith(NORMAL_EXIT_TEXTS):
            return Ending(NORMAL, SHELL_EXITED, "device", tell_device=True)
        return Ending(DEVICE_ENDED, f"the device ended the shell: {text}", "device", True)

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
